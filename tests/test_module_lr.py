"""benchmarks.module_lr: the first task trained per variant, measured with and without its module, resumable."""
from __future__ import annotations

import json
import os

import pytest

from benchmarks.module_lr import VARIANTS, module_lr, slug
from tests.conftest import make_npz
from utils.errors import UserError
from tests.conftest import read_file


def test_module_lr_measures_each_variant_and_resumes(tmp_path, capsys):
    data = make_npz(str(tmp_path / "d.npz"), n_classes=4)
    out = tmp_path / "lr"
    argv = ["--out", str(out), "--variants", "0,1", "--", "--dataset", "seq-custom", "--data_path", data,
            "--n_tasks", "2", "--backbone", "vit_tiny", "--embed_dim", "32", "--depth", "1", "--num_heads", "2",
            "--n_epochs", "1", "--seed", "0", "--base_path", str(tmp_path / "data"), "--device", "cpu",
            "--num_samples_align_pretuning", "8", "--num_epochs_align_pretuning", "1"]
    found = module_lr(argv)
    names = list(VARIANTS)[:2]
    assert list(found) == names
    small, large = (found[n] for n in names)
    for r in (small, large):
        assert 0 <= r["task0_with_module"] <= 100 and 0 <= r["task0_module_dropped"] <= 100
        assert 0 < r["relative_update_median"] <= r["relative_update_max"]
    assert large["relative_update_median"] > 2 * small["relative_update_median"]  # lr 1e-2 against 1e-3
    result = json.loads(read_file(out / "results" / f"{slug(names[0])}.json"))
    assert result["tasks_done"] == 1 and result["final_class_il"] == pytest.approx(small["task0_with_module"])
    assert "| lr 1e-2 |" in read_file(out / "module_lr.md")
    capsys.readouterr()
    assert module_lr(argv) == found  # finished variants are read back, nothing is trained again
    assert "[module_lr]" not in capsys.readouterr().out
    with pytest.raises(UserError, match="--variants"):
        module_lr(["--out", str(out), "--variants", "99"])
    assert os.path.isfile(out / f"{slug(names[1])}.json")
