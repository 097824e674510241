import pytest

from utils import metrics

R = [[90.0],
     [70.0, 80.0],
     [60.0, 50.0, 85.0]]


def test_average_and_final():
    assert metrics.average_accuracy([60.0, 50.0, 85.0]) == pytest.approx(65.0)
    assert metrics.final_average_accuracy(R) == pytest.approx(65.0)


def test_forgetting_hand_computed():
    # task 0: best 90 -> 60 = 30; task 1: best 80 -> 50 = 30
    assert metrics.forgetting(R) == pytest.approx(30.0)
    # a task whose accuracy rises after learning has no forgetting
    assert metrics.forgetting([[50.0], [60.0, 70.0]]) == pytest.approx(0.0)


def test_bwt_hand_computed():
    # (60-90 + 50-80) / 2
    assert metrics.backward_transfer(R) == pytest.approx(-30.0)
    assert metrics.backward_transfer([[50.0], [60.0, 70.0]]) == pytest.approx(10.0)


def test_fwt_hand_computed():
    before = [None, 20.0, 40.0]
    untrained = [10.0, 5.0, 30.0]
    assert metrics.forward_transfer(before, untrained) == pytest.approx(((20 - 5) + (40 - 30)) / 2)


def test_single_task_has_no_transfer_metrics():
    assert metrics.forgetting([[50.0]]) is None
    assert metrics.backward_transfer([[50.0]]) is None


def test_short_row_is_rejected():
    with pytest.raises(ValueError):
        metrics.forgetting([[1.0], [2.0]])
