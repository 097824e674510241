"""Dataset building blocks: the ContinualDataset base, scenarios, image sources and transforms."""
