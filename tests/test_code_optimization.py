"""``-O/--code_optimization``: parsing (one source of truth with ``--precision``) and equal results per level.

Tolerances (CPU, tiny ViT, second_order ITA for 2 tasks; the max. |logit difference| of the final merged model on
the test images, relative to the largest |logit|): -O 1 vs -O 0 <= 1e-6 (TF32 does not exist on a CPU);
-O 2 vs -O 0 <= 5e-2 (bf16 has an 8-bit mantissa); -O 3 vs -O 2 <= 1e-2 (the compiled graph computes the same
bf16 ops; the test uses the ``aot_eager`` backend: the same graph capture and autograd, no C++ toolchain needed).
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
    args, dataset, model = build(argv_for(folder, "--alpha_ita", "1", "-O", str(level)))
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
    assert 0 < diff <= 5e-2  # > 0: autocast really ran


def test_compiled_level_matches_bf16_and_really_compiles(runs):
    assert rel_diff(runs[3][0], runs[2][0]) <= 1e-2
    assert runs[3][1].__dict__.get("_compiled_net") is not None
    assert runs[2][1].__dict__.get("_compiled_net") is None
    assert "_compiled_net" not in "".join(runs[3][1].state_dict())  # checkpoints unchanged by -O 3
