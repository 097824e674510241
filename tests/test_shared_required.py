"""A missing ../shared asset fails a test under CI (CL_REQUIRE_SHARED=1, set by .ci/run) and wherever ../shared
exists; only a checkout without ../shared skips."""
import pytest

from tests.conftest import shared_file, shared_missing
from tests.conftest import read_file


def test_missing_asset_skips_only_without_any_shared_folder(monkeypatch, tmp_path):
    import tests.conftest as conftest
    monkeypatch.delenv("CL_REQUIRE_SHARED", raising=False)
    monkeypatch.setattr(conftest, "SHARED_ROOT", str(tmp_path / "absent"))
    with pytest.raises(pytest.skip.Exception):
        shared_file("no_such_asset.npz")
    monkeypatch.setattr(conftest, "SHARED_ROOT", str(tmp_path))  # ../shared present, the file missing: a bug
    with pytest.raises(pytest.fail.Exception, match="although"):
        shared_file("no_such_asset.npz")


def test_missing_asset_fails_when_required(monkeypatch):
    monkeypatch.setenv("CL_REQUIRE_SHARED", "1")
    with pytest.raises(pytest.fail.Exception, match="CL_REQUIRE_SHARED=1 requires it"):
        shared_missing("/nowhere/cifar100_mini.npz")


def test_ci_requires_the_shared_assets():
    import os
    ci = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".ci", "run")
    assert "CL_REQUIRE_SHARED=1" in read_file(ci)
