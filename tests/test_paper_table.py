"""benchmarks.paper: Table 1 end to end on tiny data (tiny ViT through the pass-through flags)."""
from __future__ import annotations

import csv
import json
import os

import pytest

from benchmarks.paper import TABLES, main, paper, row_dir
from tests.conftest import make_npz
from utils.errors import UserError
from tests.conftest import read_file

TINY = ["--model_config", "default", "--dataset", "seq-custom", "--n_tasks", "2", "--backbone", "vit_tiny",
        "--embed_dim", "32", "--depth", "1", "--num_heads", "2", "--lr", "0.05", "--n_epochs", "1", "--batch_size",
        "4", "--plots", "0"]
EXTRAS = ["--extra", "second_order:--num_epochs_pretuning 1 --num_epochs_align_pretuning 1 "
          "--num_samples_align_pretuning 8 --batch_size_align_pretuning 8", "--extra", "l2p:--pool_size 4 --top_k 1",
          "--extra", "coda_prompt:--pool_size 4", "--extra", "seed:--num_experts 2"]


RUN = ["Finetune", "DER++ (buffer 1000)", "L2P", "APT", "ITA-FFT", "IEL-(IA)3"]  # a subset keeps the test short


def test_table1_end_to_end_on_tiny_data(tmp_path, capsys):
    data = make_npz(str(tmp_path / "d.npz"))
    out = tmp_path / "paper"
    shared = [*TINY, "--data_path", data, "--base_path", str(tmp_path / "data"),
              "--checkpoint_path", str(tmp_path / "ckpt")]
    paths, failures = paper(["--table", "1", "--dataset", "seq-cifar100-224", "--seeds", "1", "--out", str(out),
                             "--rows", ",".join(RUN), *EXTRAS, "--", *shared])
    assert failures == []
    rows = {r["method"]: r for r in csv.DictReader(read_file(paths["csv"]).splitlines())}
    expected = TABLES["1"]["seq-cifar100-224"]
    assert list(rows) == [r[0] for r in expected]  # every row of the paper's table, in its order
    for name, model, flags, number in expected:
        assert float(rows[name]["paper"]) == number
        if model is None:
            assert rows[name]["status"].startswith("not available") and rows[name]["measured_mean"] == ""
            continue
        if name not in RUN:
            assert rows[name]["status"] == "not run" and not (out / "results" / row_dir(name)).exists()
            continue
        result = json.loads(read_file(out / "results" / row_dir(name) / "seed0.json"))
        assert result["args"]["model"] == model and result["args"]["dataset"] == "seq-custom"
        assert float(rows[name]["measured_mean"]) == pytest.approx(result["final_class_il"])
        assert rows[name]["n_seeds"] == "1"
    # the rows' own flags reach their runs
    assert json.loads(read_file(out / "results" / "der_buffer_1000" / "seed0.json"))["args"]["buffer_size"] == 1000
    iel = json.loads(read_file(out / "results" / "iel_ia3" / "seed0.json"))["args"]
    assert (iel["use_iel"], iel["tuning_style"], iel["beta_iel"]) == (True, "ia3", 20.0)
    ita = json.loads(read_file(out / "results" / "ita_fft" / "seed0.json"))["args"]
    assert (ita["use_iel"], ita["tuning_style"]) == (False, "full")
    markdown = read_file(paths["markdown"])
    assert "| ITA-LoRA | second_order | 89.96 | not run |" in markdown and "| APT | apt | 86.19 | " in markdown
    assert os.path.getsize(paths["png"]) > 1000
    # resumable: a second call reuses every complete result and runs nothing
    capsys.readouterr()
    assert main(["--table", "1", "--dataset", "seq-cifar100-224", "--seeds", "1", "--out", str(out),
                 "--rows", ",".join(RUN), *EXTRAS, "--", *shared]) == 0
    assert "python main.py" not in capsys.readouterr().out


def test_bad_table_or_dataset_is_one_line_error():
    with pytest.raises(UserError, match="--table 2 is not reproduced"):
        paper(["--table", "2", "--dataset", "seq-cifar100-224"])
    with pytest.raises(UserError, match="no column for --dataset seq-cub200"):
        paper(["--table", "1", "--dataset", "seq-cub200"])
    with pytest.raises(UserError, match="--extra names er"):
        paper(["--table", "1", "--dataset", "seq-cifar100-224", "--extra", "er:--lr 1"])
    with pytest.raises(UserError, match="unknown row 'Foo'"):
        paper(["--table", "1", "--dataset", "seq-cifar100-224", "--rows", "L2P,Foo"])


def test_compare_labels_name_variants_of_one_method():
    from benchmarks.compare import parse_models
    assert parse_models("sgd, a=second_order,b=second_order") == [("sgd", "sgd"), ("a", "second_order"),
                                                                    ("b", "second_order")]
    with pytest.raises(UserError, match="repeats a label"):
        parse_models("a=sgd,a=er")
    with pytest.raises(UserError, match="LABEL=METHOD"):
        parse_models("=sgd")
