"""docs/extending.md's "Adding a method" and "Adding a benchmark" code runs as written: registered by name, its flag
parsed, trained end to end."""
import os
import re

from tests.conftest import ROOT, make_npz, tiny_run_args

EXTENDING = os.path.join(ROOT, "docs", "extending.md")


def readme_method_code() -> str:
    with open(EXTENDING) as fh:
        text = fh.read()
    section = text[text.index("## Adding a method"):text.index("## Adding a benchmark")]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_method_runs_from_the_command_line(tmp_path):
    from app.runner import run
    from utils.registry import _cached_scan
    path = os.path.join(ROOT, "models", "my_method.py")
    assert not os.path.exists(path)
    with open(path, "w") as fh:
        fh.write(readme_method_code())
    try:
        _cached_scan.cache_clear()  # the registry finds the new file like any other method
        data = make_npz(str(tmp_path / "d.npz"))
        res = run(["--model", "my_method", *tiny_run_args(data, tmp_path), "--my_weight", "0.5", "--plots", "0",
                   "--results_file", str(tmp_path / "r.json")])
    finally:
        os.remove(path)
        _cached_scan.cache_clear()
    assert res["complete"] and res["args"]["my_weight"] == 0.5
    assert [len(row) for row in res["accuracy_matrix_class_il"]] == [1, 2]


def test_readme_benchmark_runs_from_the_command_line(tmp_path):
    from app.runner import run
    from utils.registry import _cached_scan
    with open(EXTENDING) as fh:
        text = fh.read()
    section = text[text.index("## Adding a benchmark"):]
    path = os.path.join(ROOT, "datasets", "seq_my_data.py")
    assert not os.path.exists(path)
    with open(path, "w") as fh:
        fh.write(re.search(r"```python\n(.*?)```", section, re.S).group(1))
    try:
        _cached_scan.cache_clear()
        os.makedirs(tmp_path / "data")
        make_npz(str(tmp_path / "data" / "my_data.npz"))
        argv = tiny_run_args("unused", tmp_path, "--plots", "0", "--results_file", str(tmp_path / "r.json"))
        argv = argv[argv.index("--backbone"):]  # the README's dataset instead of seq-custom
        res = run(["--model", "sgd", "--dataset", "seq-my-data", *argv])
        from datasets import get_dataset_class
        assert get_dataset_class("seq-my-data").N_TASKS == 2
    finally:
        os.remove(path)
        _cached_scan.cache_clear()
    assert res["complete"] and res["args"]["dataset"] == "seq-my-data"
    assert [len(row) for row in res["accuracy_matrix_class_il"]] == [1, 2]
