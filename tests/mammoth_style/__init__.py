"""Model files written against Mammoth's API (not this framework's), used by tests/test_mammoth_models.py.

They are test data: the test puts this folder on ``models.__path__`` (as if the files were
dropped into ``models/``) and runs them unchanged through ``main.py``'s code path.
"""
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture
def mammoth_models():
    """Put these files on ``models.__path__``, as if they were dropped into models/."""
    import models
    from utils.registry import _cached_scan
    models.__path__.append(HERE)
    _cached_scan.cache_clear()
    yield
    models.__path__.remove(HERE)
    _cached_scan.cache_clear()
