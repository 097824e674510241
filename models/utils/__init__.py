"""Shared pieces of the continual-learning methods."""
