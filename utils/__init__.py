"""The framework: configuration, registries, the training loop, evaluation, results and checkpoints."""
