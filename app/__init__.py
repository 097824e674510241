"""The application layer: the run command, configuration, checkpoint editing, demo and report.

It sits above ``models/``, ``datasets/`` and ``backbone/`` (which never import it); ``utils/`` below
everything holds what every layer may import.
"""
