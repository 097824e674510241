import os

import numpy as np
import pytest
import torch

from utils import checkpoints
from utils.errors import UserError


def test_roundtrip_and_rng_state(tmp_path):
    torch.manual_seed(0)
    np.random.seed(0)
    state = {"model": {"w": torch.randn(3)}, "rng": checkpoints.rng_state(), "record": {"a": [1.0, None]}}
    path = str(tmp_path / "run" / "task_1.pt")
    checkpoints.save_checkpoint(path, state)
    expected = (torch.rand(2), np.random.rand(2))
    loaded = checkpoints.load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["record"] == {"a": [1.0, None]}
    checkpoints.set_rng_state(loaded["rng"])
    again = (torch.rand(2), np.random.rand(2))
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert not [f for f in os.listdir(tmp_path / "run") if f.startswith(".tmp")]


def test_corruption_is_detected_and_previous_is_used(tmp_path):
    folder = tmp_path / "run"
    checkpoints.save_checkpoint(str(folder / "task_1.pt"), {"x": torch.ones(1000)})
    checkpoints.save_checkpoint(str(folder / "task_2.pt"), {"x": torch.full((1000,), 2.0)})
    raw = bytearray((folder / "task_2.pt").read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 8] = b"garbage!"  # flip payload bytes: only the checksum can tell
    (folder / "task_2.pt").write_bytes(bytes(raw))
    with pytest.raises(UserError, match="corrupt"):
        checkpoints.load_checkpoint(str(folder / "task_2.pt"))
    with pytest.warns(UserWarning, match="falling back"):
        path, state = checkpoints.latest_checkpoint(str(folder))
    assert path.endswith("task_1.pt") and float(state["x"][0]) == 1.0
    (folder / "task_1.pt").write_bytes(b"")  # truncated to nothing
    with pytest.warns(UserWarning):
        assert checkpoints.latest_checkpoint(str(folder)) is None


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    path = tmp_path / "evil.pt"
    torch.save({"payload": Evil()}, path)
    with pytest.raises(UserError, match="corrupt or not a checkpoint"):
        checkpoints.load_checkpoint(str(path))
