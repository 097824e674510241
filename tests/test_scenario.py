import numpy as np
import pytest

from datasets.utils.scenario import ClassIncrementalScenario


def test_offsets_equal_and_unequal_tasks():
    s = ClassIncrementalScenario.build(2, 5)
    assert [s.offsets(t) for t in range(5)] == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    mit = ClassIncrementalScenario.build([7] * 7 + [6] * 3, 10)
    assert mit.n_classes == 67
    assert mit.offsets(7) == (49, 55) and mit.offsets(9) == (61, 67)
    assert mit.task_of_label(48) == 6 and mit.task_of_label(49) == 7 and mit.task_of_label(66) == 9


def test_permutation_follows_mammoth_convention():
    s = ClassIncrementalScenario.build(2, 5, permute=True, seed=3)
    expected = np.random.RandomState(3).permutation(10)
    assert list(s.class_order) == expected.tolist()
    original = np.arange(10)
    assert s.relabel(original).tolist() == expected.tolist()  # new = order[old]
    # the same seed gives the same order, another seed another one
    assert ClassIncrementalScenario.build(2, 5, permute=True, seed=3).class_order == s.class_order
    assert ClassIncrementalScenario.build(2, 5, permute=True, seed=4).class_order != s.class_order


def test_bad_structure():
    with pytest.raises(ValueError):
        ClassIncrementalScenario.build([2, 2], 3)
    with pytest.raises(IndexError):
        ClassIncrementalScenario.build(2, 2).offsets(2)
