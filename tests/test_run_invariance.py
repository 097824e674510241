"""Settings that must not change results, and the ones whose effect is checked: --eval_batch_size,
--num_workers 2 (determinism and resume), --validation_mode complete."""
import pytest
import torch

from app.config import parse_args
from app.runner import run
from datasets import get_dataset
from tests.conftest import make_npz, tiny_run_args


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_npz(str(tmp_path_factory.mktemp("inv") / "d.npz"), n_classes=4, per_class=8)


def test_eval_batch_size_does_not_change_results(data, tmp_path):
    results = [run(["--model", "sgd", *tiny_run_args(data, tmp_path), "--plots", "0", "--eval_batch_size", size,
                    "--results_file", str(tmp_path / f"e{size}.json")]) for size in ("1", "3")]
    for key in ("accuracy_matrix_class_il", "accuracy_matrix_task_il"):
        assert results[0][key] == results[1][key], key
    assert results[0]["args"]["eval_batch_size"] == 1  # the flag did reach the run


def test_two_workers_are_deterministic_and_resume_exactly(data, tmp_path):
    base = ["--model", "sgd", *tiny_run_args(data, tmp_path), "--plots", "0", "--num_workers", "2"]
    full = run([*base, "--results_file", str(tmp_path / "a.json")])
    again = run([*base, "--results_file", str(tmp_path / "b.json")])
    run([*base, "--savecheck", "task", "--stop_after", "1", "--results_file", str(tmp_path / "p.json")])
    resumed = run([*base, "--savecheck", "task", "--resume", "--results_file", str(tmp_path / "r.json")])
    for key in ("accuracy_matrix_class_il", "accuracy_matrix_task_il"):
        assert full[key] == again[key] == resumed[key], key


def _validation_dataset(data, tmp_path, mode):
    return get_dataset(parse_args(["--model", "sgd", *tiny_run_args(data, tmp_path), "--validation", "0.25",
                                   "--validation_mode", mode]))


def test_validation_mode_complete_holds_every_seen_class(data, tmp_path):
    labels = {}
    for mode in ("current", "complete"):
        dataset = _validation_dataset(data, tmp_path, mode)
        for _ in range(2):
            dataset.get_data_loaders()
        labels[mode] = [sorted({int(y) for _, y, *_ in loader.dataset}) for loader in dataset.test_loaders]
        train = {int(i) for t in range(2) for i in dataset.task_indices(dataset.splits[0], t)}
        assert len(train) == 4 * 6  # 25 % of the 8 training images per class are held out
    assert labels["current"] == [[0, 1], [2, 3]]
    assert labels["complete"] == [[0, 1], [0, 1, 2, 3]]
