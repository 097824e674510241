"""The framework: configuration, registries, the training loop, evaluation, results and checkpoints."""


def binary_to_boolean_type(value: str) -> bool:
    """Mammoth's ``utils.binary_to_boolean_type`` (0/1/true/false -> bool), for Mammoth model files."""
    from utils.args import parse_bool
    return parse_bool(value)


def none_or_float(value: str) -> float | None:
    """Mammoth's ``utils.none_or_float``: 'None' -> None, else a float (for model files' flags)."""
    return None if value == "None" else float(value)
