"""--precision bf16 trains under autocast, but the penalty gradients and the penalty step stay fp32."""
import copy

import pytest
import torch

from tests.test_second_order_model import argv_for, build


def started_model(tmp_path, *extra):
    """A second_order model at the start of task 1 (Fisher computed) with non-zero task modules and head."""
    args, dataset, model = build(argv_for(tmp_path, "--precision", "bf16", *extra))
    dataset.get_data_loaders()
    model.meta_begin_task(dataset)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.get_parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


def rel_err(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


@pytest.mark.parametrize("extra", [("--alpha_ita", "3", "--req_weight_cls", "2", "--simple_reg_weight_cls", "0.1"),
                                   ("--use_iel", "1", "--beta_iel", "3", "--tuning_style", "full",
                                    "--req_weight_cls", "2")], ids=["ita-lora-decoupled", "iel-full-coupled"])
def test_penalty_gradients_and_step_are_fp32_under_bf16(tmp_path, extra):
    model = started_model(tmp_path, *extra)
    reference = [g.clone() for _, g in model.adapter_penalty_grads() + model.head_penalty_grads()]  # fp32
    fp32 = copy.deepcopy(model)
    captured = []

    def capturing(method):
        def wrapped():
            out = method()
            captured.extend(out)
            return out
        return wrapped
    for name in ("adapter_penalty_grads", "head_penalty_grads"):
        setattr(model, name, capturing(getattr(model, name)))
    with model.autocast():  # the training loop runs observe, and so the penalty step, inside this autocast
        assert torch.is_autocast_enabled("cpu")
        model.optimizer_step()
    fp32.optimizer_step()  # the fp32 reference step (no autocast)
    used = [g for _, g in captured]
    assert len(used) == len(reference) and all(g.dtype == torch.float32 for g in used)
    assert max(rel_err(g, r) for g, r in zip(used, reference)) <= 1e-6
    for p, q in zip(model.get_parameters(), fp32.get_parameters()):
        assert p.dtype == torch.float32 and rel_err(p.detach(), q.detach()) <= 1e-6
    if model.args.tuning_style == "lora":  # without the fp32 guard, bf16 autocast visibly changes the LoRA grads
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
            bf16 = [g for _, g in fp32.adapter_penalty_grads()]
        exact = [g for _, g in fp32.adapter_penalty_grads()]
        assert max(rel_err(g, r) for g, r in zip(bf16, exact)) > 1e-4
