"""InfLoRA building blocks."""
