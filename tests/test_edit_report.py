"""The module-editing command writes its target/control table as JSON and as a plot."""
import json

import pytest

from tests.test_second_order_model import argv_for
from app import edit
from app.runner import run


def test_edit_writes_table_and_plot(tmp_path, capsys):
    run([*argv_for(tmp_path, "--alpha_ita", "1", n_classes=6, n_tasks=3), "--savecheck", "last",
         "--ckpt_name", "ed", "--results_file", str(tmp_path / "r.json"), "--plots", "0"])
    ckpt = str(tmp_path / "ckpt" / "ed" / "task_3.pt")
    out, png = tmp_path / "drop.json", tmp_path / "drop.png"
    assert edit.main(["--checkpoint", ckpt, "--drop", "1", "--out", str(out), "--plot", str(png)]) == 0
    report = json.load(open(out))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot: {png}" in capsys.readouterr().out
    rows = edit.edit_plot_rows(report)
    assert [r["name"] for r in rows] == ["target", "control"]
    assert rows[0]["edited"] == pytest.approx(report["edited_class_il"][1])  # the single dropped task
    assert rows[1]["full"] == pytest.approx((report["full_class_il"][0] + report["full_class_il"][2]) / 2)
