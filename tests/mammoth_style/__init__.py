"""Model files written against Mammoth's API (not this framework's), used by tests/test_mammoth_models.py.

They are test data: the test puts this folder on ``models.__path__`` (as if the files were
dropped into ``models/``) and runs them unchanged through ``main.py``'s code path.
"""
