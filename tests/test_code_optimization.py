"""``-O/--code_optimization``: parsing (one source of truth with ``--precision``) and equal results per level.

Tolerances (CPU, tiny ViT, second_order ITA for 2 tasks; the max. |logit difference| of the final merged model on
the test images, relative to the largest |logit|): -O 1 vs -O 0 <= 1e-6 (TF32 does not exist on a CPU);
-O 2 vs -O 0 <= 5e-2 (bf16 has an 8-bit mantissa; measured 2.2e-2); -O 3 vs -O 2 <= 1e-2 (the compiled graph
computes the same bf16 ops; the test uses the ``aot_eager`` backend: the same graph capture and autograd, no C++
toolchain needed).

The end-to-end runs use SGD. With AdamW (the model's default) the same comparison gives 0.38, and that is
Adam, not a bug: both runs start from bitwise-equal weights on the same batches (equal first loss), the
gradients of a step agree within 0.4-0.7 % (relative Frobenius norm, ``test_bf16_step_gradients_match_fp32``),
but Adam's first steps are close to ``lr * sign(g)`` per element, and the LoRA ``B`` gradients have many
near-zero elements (71 % below 1 % of the largest on qkv) whose sign bf16 rounding flips (2 %): at lr 0.05 those
elements take a full step in the other direction, a 29 % relative difference in the first update that the next
3 steps carry into the merged model. SGD keeps the difference proportional to the gradient error.
"""
import pytest
import torch

from tests.test_second_order_model import argv_for, build
from app.config import parse_args
from utils.errors import UserError
from utils.optimization import COMPILE_BACKEND_ENV
from utils.training import train


def parsed(tmp_path, *extra):
    return parse_args(argv_for(tmp_path, *extra))


@pytest.mark.parametrize("extra, level, precision", [
    ((), 0, "fp32"), (("--code_optimization", "0"), 0, "fp32"), (("--code_optimization", "1"), 1, "fp32"),
    (("-O", "2"), 2, "bf16"), (("-O", "3"), 3, "bf16"), (("--precision", "bf16"), 2, "bf16"),
    (("--precision", "fp32"), 0, "fp32"), (("-O", "3", "--precision", "bf16"), 3, "bf16"),
    (("-O", "1", "--precision", "fp32"), 1, "fp32")])
def test_level_and_precision_resolve_to_one_setting(tmp_path, extra, level, precision):
    args = parsed(tmp_path, *extra)
    assert (args.code_optimization, args.precision) == (level, precision)


@pytest.mark.parametrize("extra", [("-O", "2", "--precision", "fp32"), ("-O", "1", "--precision", "bf16")])
def test_contradicting_flags_are_a_one_line_error(tmp_path, extra):
    with pytest.raises(UserError, match="--code_optimization .* --precision"):
        parsed(tmp_path, *extra)


def test_bad_level_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="code_optimization"):
        parsed(tmp_path, "-O", "4")


def final_logits(tmp_path, monkeypatch, level: int):
    monkeypatch.setenv(COMPILE_BACKEND_ENV, "aot_eager")
    folder = tmp_path / f"O{level}"
    folder.mkdir()
    args, dataset, model = build(argv_for(folder, "--alpha_ita", "1", "--optimizer", "sgd", "-O", str(level)))
    train(model, dataset, args)
    model.eval()
    x = torch.cat([x for loader in dataset.test_loaders for x, _ in loader])
    with torch.no_grad():
        return model(x).float(), model


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp("O")
    try:
        yield {level: final_logits(tmp, monkeypatch, level) for level in (0, 1, 2, 3)}
    finally:
        monkeypatch.undo()
        torch.backends.cuda.matmul.allow_tf32 = False


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_tf32_level_equals_plain_on_cpu(runs):
    assert rel_diff(runs[1][0], runs[0][0]) <= 1e-6


def test_bf16_level_is_close_to_fp32_but_not_identical(runs):
    diff = rel_diff(runs[2][0], runs[0][0])
    assert 0 < diff <= 5e-2  # > 0: autocast really ran (measured 2.2e-2)


def test_compiled_level_matches_bf16_and_really_compiles(runs):
    assert rel_diff(runs[3][0], runs[2][0]) <= 1e-2
    assert runs[3][1].__dict__.get("_compiled_net") is not None
    assert runs[2][1].__dict__.get("_compiled_net") is None
    assert "_compiled_net" not in "".join(runs[3][1].state_dict())  # checkpoints unchanged by -O 3


def test_bf16_step_gradients_match_fp32(tmp_path):
    """One training step's gradients under the -O 2 autocast against fp32, from the same state after
    ``begin_task`` (B made non-zero, as after a first step, so that A gets a gradient too)."""
    args, dataset, model = build(argv_for(tmp_path, "--alpha_ita", "1", "-O", "2"))
    dataset.get_data_loaders()
    model.meta_begin_task(dataset)
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".B") and p.requires_grad:
                p.normal_(0, 0.01)
    x, y = next(iter(dataset.make_loader(dataset.train_dataset(0), shuffle=False, batch_size=8)))[:2]
    params = list(model.get_parameters())

    def grads(context):
        with context:
            loss = torch.nn.functional.cross_entropy(model.train_net(x)[:, :2], y)
        return torch.autograd.grad(loss, params)

    exact, bf16 = grads(torch.autocast("cpu", enabled=False)), grads(model.autocast())
    errors = [float((b - a).norm() / a.norm()) for a, b in zip(exact, bf16)]
    assert len(errors) == 10 and all(a.dtype == b.dtype == torch.float32 for a, b in zip(exact, bf16))
    assert 0 < min(errors) and max(errors) <= 2e-2, errors  # measured 3.7e-3 .. 6.4e-3


def test_unset_level_is_the_device_types_default(monkeypatch):
    import argparse

    from utils import optimization
    monkeypatch.setitem(optimization.DEFAULT_LEVELS, "cuda", 2)
    resolve = optimization.resolve_code_optimization
    assert resolve(argparse.Namespace(code_optimization=None, precision=None, device="cuda:1")).code_optimization == 2
    assert resolve(argparse.Namespace(code_optimization=None, precision=None, device="cpu")).code_optimization == 0
    # an explicit flag wins: --precision fp32 alone is -O 0 on any device, -O 1 stays 1
    assert resolve(argparse.Namespace(code_optimization=None, precision="fp32", device="cuda")).code_optimization == 0
    assert resolve(argparse.Namespace(code_optimization=1, precision=None, device="cuda")).code_optimization == 1


def test_a_methods_own_default_level_wins_on_its_device_type(tmp_path):
    import argparse

    from app.config import parse_args
    from models.second_order import SecondOrder
    from tests.test_second_order_model import argv_for
    from utils import optimization
    resolve = optimization.resolve_code_optimization
    ns = argparse.Namespace(code_optimization=None, precision=None, device="cuda:0")
    assert resolve(ns, {"cuda": 1}).code_optimization == 1 and ns.precision == "fp32"
    ns = argparse.Namespace(code_optimization=None, precision=None, device="cpu")
    assert resolve(ns, {"cuda": 1}).code_optimization == 0  # another device type: the general default
    ns = argparse.Namespace(code_optimization=0, precision=None, device="cuda")
    assert resolve(ns, {"cuda": 1}).code_optimization == 0  # an explicit -O wins
    assert SecondOrder.DEFAULT_LEVELS == {"cuda": 1}  # the measured rule (docs/speed.md)
    assert optimization.default_level("cuda") == 0  # other methods: unmeasured, unchanged
    args = parse_args(argv_for(tmp_path))  # through the parser: the CPU's level, resolved
    assert args.code_optimization == 0 and args.fisher_precision == "fp32"
