"""benchmarks/debug_lines.py: its inputs are checked, its lines are Mammoth's, and the CropDisease it writes is read."""
from benchmarks import debug_lines
from tests.test_mammoth_lines import MAMMOTH_LINES


def test_the_timed_lines_are_mammoths_second_order_lines():
    assert debug_lines.LINES == MAMMOTH_LINES[:4]


def test_bad_arguments_exit_2(tmp_path, capsys):
    data = tmp_path / "d.npz"
    data.write_bytes(b"")
    assert debug_lines.main(["--lines", "5", "--data", str(data)]) == 2
    assert "--lines takes numbers 1..4" in capsys.readouterr().err
    assert debug_lines.main(["--data", str(tmp_path / "missing.npz")]) == 2
    assert "not found" in capsys.readouterr().err


def test_written_cropdisease_is_read_by_the_dataset(tmp_path):
    from tests.dataset_builders import dataset_for
    debug_lines.write_cropdisease(str(tmp_path), per_class=1, size=16)
    train, test = dataset_for(tmp_path, "--dataset", "seq-cropdisease").splits
    assert len(train) == 35 and len(test) == 35 and train.image(0).size == (16, 16)
