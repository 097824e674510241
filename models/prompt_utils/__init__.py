"""Prompting a timm ``VisionTransformer`` without forking it: its own modules are called in order
and prompt tokens (L2P) or attention prefixes (CODA-Prompt) are inserted between them."""
