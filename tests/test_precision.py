"""``--precision bf16``: the training step and evaluation run under autocast; Fisher statistics stay fp32."""
import pytest
import torch

from tests.test_second_order_model import argv_for, build
from utils.errors import UserError
from utils.training import train


def dtypes_by_phase(tmp_path, *extra):
    """Output dtypes of one adapted layer during begin_task (stats), observe (train) and evaluation."""
    args, dataset, model = build(argv_for(tmp_path, "--alpha_ita", "1", *extra))
    phase, seen = ["eval"], {"train": set(), "eval": set(), "stats": set()}

    def wrap(name, label):
        original = getattr(model, name)

        def wrapped(*a, **k):
            phase[0] = label
            try:
                return original(*a, **k)
            finally:
                phase[0] = "eval"
        setattr(model, name, wrapped)
    wrap("meta_begin_task", "stats")
    wrap("meta_observe", "train")
    model.net.body.blocks[0].mlp.fc1.register_forward_hook(lambda m, i, o: seen[phase[0]].add(o.dtype))
    record = train(model, dataset, args)
    return seen, model, record


def test_bf16_autocast_in_training_and_evaluation_fp32_fisher(tmp_path):
    seen, model, record = dtypes_by_phase(tmp_path, "--precision", "bf16")
    assert seen["train"] == {torch.bfloat16}
    assert seen["eval"] == {torch.bfloat16}
    assert torch.float32 in seen["stats"]  # the Fisher pass is never autocast
    assert all(f.dtype == torch.float32 and torch.isfinite(f).all() for f in model.fisher_past.values())
    assert len(record.accuracy_matrix_class_il) == 2


def test_fp32_by_default(tmp_path):
    seen, _, _ = dtypes_by_phase(tmp_path)
    assert seen["train"] == seen["eval"] == seen["stats"] == {torch.float32}


def test_bad_precision_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="precision"):
        build(argv_for(tmp_path, "--precision", "fp8"))
