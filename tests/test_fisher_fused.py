"""The fused per-sample square-and-sum kernel (fisher_fused.py) in Triton's CPU interpreter, against float64 brute
force, the materialised forms of fisher.py and the brute-force Fisher of a tiny ViT; and its compilation for
NVIDIA GPUs (no GPU needed to compile)."""
import contextlib
import os
import re
import subprocess

import pytest
import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile as triton_compile

from models.second_order_utils import fisher, fisher_fused
from models.second_order_utils.fisher import class_batched_sq_grads, network_fisher, per_sample_sq_grads
from models.second_order_utils.fisher_fused import fused_sq_grads, sample_splits
from tests.test_fisher_exact import rel_err, vit
from tests.test_second_order_math import brute_force_fisher
from models.second_order_utils.modules import inject_adapters
from utils import accelerator, onednn_products

SMALL = (16, 16, 16)  # blocks of the interpreter runs: the shapes below are not multiples of them


def brute(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_b (g[b]^T x[b])^2 in float64, one sample at a time."""
    out = torch.zeros(g.shape[2], x.shape[2], dtype=torch.float64)
    for b in range(g.shape[0]):
        out += torch.einsum("to,ti->oi", g[b].double(), x[b].double()).square()
    return out


def split_bf16(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """hi = bf16(v), lo = bf16(v - hi) of fp32 ``v``, as float64."""
    hi = v.bfloat16()
    return hi.double(), (v - hi.float()).bfloat16().double()


def bf16x3_emulated(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_b (g_hi^T x_hi + g_hi^T x_lo + g_lo^T x_hi)^2 in float64: what the bf16x3 kernel computes."""
    (g_hi, g_lo), (x_hi, x_lo) = split_bf16(g), split_bf16(x)
    per = torch.einsum("bto,bti->boi", g_hi, x_hi) + torch.einsum("bto,bti->boi", g_hi, x_lo) \
        + torch.einsum("bto,bti->boi", g_lo, x_hi)
    return per.square().sum(0)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b).abs().max() / b.abs().max())


def data(b=3, t=21, o=37, i=19, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, o, generator=gen), torch.randn(b, t, i, generator=gen)


@pytest.mark.parametrize("shape", [(3, 21, 37, 19), (1, 5, 16, 16), (4, 40, 17, 33)])
@pytest.mark.parametrize("splits", [1, 2, None])
def test_fp32_kernels_equal_the_float64_loop(shape, splits):
    g, x = data(*shape)
    ref = brute(g, x)
    for precision in ("fp32", "tf32", "tf32x3"):  # the interpreter's dots are fp32 whatever input_precision says
        out = fused_sq_grads(g, x, precision, splits=splits, blocks=SMALL, interpret=True)
        assert out.dtype == torch.float32 and out.shape == (shape[2], shape[3])
        assert rel(out, ref) <= 1e-5, precision


@pytest.mark.parametrize("splits", [1, 3])
def test_bf16x3_splits_each_operand_into_two_bf16_halves(splits):
    g, x = data(4, 23, 20, 18, seed=1)
    ref, emulated = brute(g, x), bf16x3_emulated(g, x)
    out = fused_sq_grads(g, x, "bf16x3", splits=splits, blocks=SMALL, interpret=True)
    fp32 = fused_sq_grads(g, x, "fp32", splits=splits, blocks=SMALL, interpret=True)
    assert rel(out, ref) <= 1e-4
    assert not torch.equal(out, fp32)  # the split happens: the lo.lo term is missing
    # the products are those of the hi/lo halves (rounded to nearest): 10x closer to their float64 emulation than
    # the fp32 kernel is (measured 1.3e-7 against 5.3e-6)
    assert rel(out, emulated) <= 1e-6 < rel(out, ref)
    assert rel(out, emulated) * 10 < rel(fp32, emulated)


def test_bf16_kernel_rounds_the_operands_once():
    g, x = data(2, 19, 18, 17, seed=2)
    out = fused_sq_grads(g, x, "bf16", blocks=SMALL, interpret=True)
    assert rel(out, brute(g.bfloat16(), x.bfloat16())) <= 1e-6
    assert rel(out, brute(g, x)) > 1e-4
    # bf16 tensors in memory: loaded and multiplied exactly whatever the precision
    assert rel(fused_sq_grads(g.bfloat16(), x.bfloat16(), "fp32", blocks=SMALL, interpret=True),
               brute(g.bfloat16(), x.bfloat16())) <= 1e-6


def test_strided_inputs_and_default_blocks():
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(3, 40, 30, generator=gen).transpose(1, 2)  # (B, T, O) with T contiguous
    x = torch.randn(3, 60, 2 * 70, generator=gen)[:, ::2, ::2][:, :30]  # every stride > 1
    assert not g.is_contiguous() and not x.is_contiguous()
    out = fused_sq_grads(g, x, "fp32", interpret=True)
    assert rel(out, brute(g, x)) <= 1e-5


def test_empty_inputs_and_bad_arguments():
    g, x = data(0, 7, 5, 6)
    assert torch.equal(fused_sq_grads(g, x, interpret=True), torch.zeros(5, 6))
    g, x = data(2, 0, 5, 6)
    assert torch.equal(fused_sq_grads(g, x, interpret=True), torch.zeros(5, 6))
    g, x = data(2, 3, 5, 6)
    with pytest.raises(ValueError, match="unknown fused-kernel precision 'bf8'"):
        fused_sq_grads(g, x, "bf8", interpret=True)
    with pytest.raises(ValueError, match="equal B and T"):
        fused_sq_grads(g, x[:, :2], interpret=True)
    with pytest.raises(ValueError, match="different devices"):
        fused_sq_grads(g, x.to("meta"), interpret=True)


def test_sample_splits_fill_the_grid_only_when_the_tiles_are_few():
    assert sample_splits(64, 1000) == 1
    assert sample_splits(64, 264) == 1
    assert sample_splits(64, 100) == 3
    assert sample_splits(2, 1) == 2  # at most one split per sample
    assert sample_splits(0, 4) == 1


def test_the_fused_form_is_chosen_where_triton_runs_and_forced_for_the_interpreter(monkeypatch):
    assert not accelerator.fused_kernels_available("cpu")
    assert accelerator.fused_kernels_available("cuda")  # a CUDA device, and triton imports here
    assert isinstance(accelerator.on_device("cpu"), contextlib.nullcontext)  # the CPU: nothing to switch
    # the CPU: the per-sample oneDNN products where torch has oneDNN, else the materialised "inplace" form
    assert fisher.square_sum_form(torch.device("cpu")) == "onednn"
    monkeypatch.setattr(onednn_products, "available", lambda: False)
    assert fisher.square_sum_form(torch.device("cpu")) == "inplace"
    monkeypatch.setattr(fisher_fused, "INTERPRET", True)
    assert fisher.square_sum_form(torch.device("cpu")) == "fused"
    per = torch.randn(3, 4, 5)
    assert torch.allclose(fisher.square_sum(per.clone()), per.square().sum(0))  # materialised: never "fused"


def spy(monkeypatch) -> list:
    calls = []
    original = fisher_fused.fused_sq_grads

    def counting(g, x, precision="fp32", **kwargs):
        calls.append((tuple(g.shape), tuple(x.shape), precision))
        return original(g, x, precision, **kwargs)
    monkeypatch.setattr(fisher_fused, "fused_sq_grads", counting)
    return calls


def test_per_sample_sq_grads_in_the_fused_form_equals_the_materialised_one(monkeypatch):
    g, x = data(5, 9, 12, 7, seed=4)
    materialised = per_sample_sq_grads(x, g, False)
    classes = torch.randn(3, 5, 9, 12, generator=torch.Generator().manual_seed(5))
    batched = class_batched_sq_grads(x, classes, False)
    monkeypatch.setattr(fisher_fused, "INTERPRET", True)
    calls = spy(monkeypatch)
    fused = per_sample_sq_grads(x, g, False)
    assert calls == [((5, 9, 12), (5, 9, 7), "fp32")]
    assert rel(fused, brute(g, x)) <= 1e-5 and rel(fused, materialised.double()) <= 1e-5
    assert rel(class_batched_sq_grads(x, classes, False), batched.double()) <= 1e-5
    assert calls[-1] == ((5, 9, 36), (5, 9, 7), "fp32")  # 3 classes folded into O
    per_sample_sq_grads(x, g, False, dtype=torch.bfloat16)
    per_sample_sq_grads(x, g, False, precision="bf16x3")
    per_sample_sq_grads(x, g, False, precision="tf32")
    assert [c[2] for c in calls[-3:]] == ["bf16", "bf16x3", "tf32"]
    before = len(calls)
    per_sample_sq_grads(x[:, :4], g[:, :4], False)  # <= 4 tokens: the pairwise product
    per_sample_sq_grads(torch.randn(2, 3, 5, 5), torch.randn(2, 4, 5, 5), True)  # convolutions: materialised
    assert len(calls) == before


@pytest.mark.parametrize("class_batch", [1, 3])
def test_vit_fisher_through_the_fused_kernel_equals_the_brute_force(monkeypatch, class_batch):
    net = vit()
    layers = inject_adapters(net, "lora", 2)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    ref = brute_force_fisher(net, layers, x)
    monkeypatch.setattr(fisher_fused, "INTERPRET", True)
    calls = spy(monkeypatch)
    sums, n = network_fisher(net, layers, [x[:2], x[2:]], class_batch=class_batch)
    assert n == 3 and rel_err(sums, ref) <= 1e-4
    assert calls and all(c[0][1] == 17 and c[2] == "fp32" for c in calls)  # 16 patches + the class token


def compiled_ptx(precision: str, arch: int) -> str:
    """PTX of the kernel as launched (blocks and options) for an NVIDIA GPU of compute capability ``arch``."""
    kernel = fisher_fused._kernel(False)
    signature = {name: "*fp32" for name in ("g_ptr", "x_ptr", "out_ptr")}
    signature.update({name: "i32" for name in kernel.arg_names[3:16]})
    operands = precision if precision.startswith("bf16") else "fp32"
    block_o, block_i, block_t = fisher_fused.BLOCKS
    consts = dict(BLOCK_O=block_o, BLOCK_I=block_i, BLOCK_T=block_t, DOT_PRECISION=fisher_fused.DOT_PRECISION[precision],
                  OPERANDS=operands, DOT_DTYPE=tl.bfloat16 if operands != "fp32" else tl.float32)
    signature.update({name: "constexpr" for name in consts})
    source = ASTSource(kernel, signature, constexprs={(kernel.arg_names.index(k),): v for k, v in consts.items()})
    return triton_compile(source, target=GPUTarget("cuda", arch, 32), options=dict(fisher_fused.LAUNCH)).asm["ptx"]


def ptxas_report(ptx: str, tmp_path) -> str:
    """ptxas -v of ``ptx`` for its own target (registers, spills)."""
    target = re.search(r"^\.target (\w+)", ptx, re.M).group(1)
    path = tmp_path / f"kernel_{target}.ptx"
    path.write_text(ptx)
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    done = subprocess.run([ptxas, f"-arch={target}", "-v", str(path), "-o", os.devnull], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stderr


@pytest.mark.parametrize("arch", [80, 90])
def test_the_kernel_compiles_for_nvidia_gpus_with_the_intended_products_and_no_spills(arch, tmp_path):
    mma = "wgmma" if arch == 90 else "mma.sync"
    ptx = {p: compiled_ptx(p, arch) for p in fisher_fused.PRECISIONS}
    assert mma not in ptx["fp32"]  # IEEE fp32: FMA, no tensor cores
    assert "tf32" in ptx["tf32"] and "tf32" in ptx["tf32x3"]
    assert ptx["tf32x3"].count(mma) > ptx["tf32"].count(mma)
    for p in ("bf16", "bf16x3"):
        assert "bf16" in ptx[p] and "tf32" not in ptx[p] and mma in ptx[p], p
    assert ptx["bf16x3"].count(mma) > ptx["bf16"].count(mma)
    for p, code in ptx.items():
        report = ptxas_report(code, tmp_path)
        assert "Used" in report and "0 bytes spill stores, 0 bytes spill loads" in report, (p, report)

def test_square_sum_benchmark_skips_the_fused_kernel_on_a_cpu(capsys):
    from benchmarks import square_sum
    assert square_sum.main(["--shapes", "3,20,18", "--tokens", "7", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "GEMM + square-sum at T = 7" in out and f"fused: {square_sum.FUSED_SKIPPED}" in out
    row = square_sum.measure((3, 20, 18), torch.device("cpu"), 1, 7)["with_product"]
    # the CPU's one-pass form: per-sample oneDNN products squared into the sum, where torch has oneDNN
    one_pass = {"onednn"} if onednn_products.available() else set()
    assert set(row["seconds"]) == {"inplace", "norm", "einsum"} | one_pass
    assert row["chosen"] == ("onednn" if one_pass else "inplace")
    assert max(row["max_rel_err"].values()) < 1e-5


def interpreted_benchmarks(monkeypatch):
    """benchmarks.square_sum as where Triton runs: the fused kernel in the CPU interpreter, chosen by the Fisher."""
    from benchmarks import square_sum
    monkeypatch.setattr(fisher_fused, "INTERPRET", True)
    monkeypatch.setattr(square_sum, "fused_kernels_available", lambda device: True)
    monkeypatch.setattr(square_sum, "fused_sq_grads", lambda g, x, precision: fused_sq_grads(
        g, x, precision, blocks=SMALL, interpret=True))
    return square_sum


def test_square_sum_benchmark_times_the_fused_kernel_beside_the_gemm_and_square_sum(monkeypatch):
    square_sum = interpreted_benchmarks(monkeypatch)
    row = square_sum.measure_pass((3, 20, 18), 7, torch.device("cpu"), 1)
    one_pass = {"onednn"} if onednn_products.available() else set()  # timed on a CPU beside the fused kernel
    assert set(row["seconds"]) == {"inplace", "norm", "einsum", "fused"} | one_pass and row["fused"] == "fp32"
    assert row["chosen"] == "fused" and row["chosen_is_fastest"] == (row["fastest"] == "fused")
    assert max(row["max_rel_err"].values()) < 1e-5
    by_precision = square_sum.fused_precisions((3, 20, 18), 7, torch.device("cpu"), 2)
    assert set(by_precision) == {"fp32", "tf32x3", "bf16x3"}
    assert by_precision["fp32"]["max_rel_err"] < 1e-6 < by_precision["bf16x3"]["max_rel_err"] < 1e-4
    for v in by_precision.values():
        assert v["tflop_per_s"] == pytest.approx(2 * 3 * 7 * 20 * 18 / v["seconds"] / 1e12)


def test_gpu_check_reports_the_fused_kernel_where_it_runs(monkeypatch):
    from benchmarks import gpu_check
    interpreted_benchmarks(monkeypatch)
    monkeypatch.setitem(gpu_check.SQUARE_SUM_SHAPES, "cpu", [(2, 20, 18)])
    monkeypatch.setattr(accelerator, "fused_kernels_available", lambda device: True)
    sq = gpu_check.square_sum_check("cpu")
    assert sq["chosen"] == "fused" and len(sq["fastest"]) == 1
    one_pass = {"onednn"} if onednn_products.available() else set()
    assert set(sq["rows"][0]["with_product"]["seconds"]) == {"inplace", "norm", "einsum", "fused"} | one_pass
    fused = sq["fused"]["2,20,18"]
    assert fused["bf16x3"]["max_rel_err"] < 1e-4 and fused["tf32x3"]["max_rel_err"] < 1e-5
    lines = gpu_check.square_sum_lines(sq)
    assert lines[0].endswith("(chosen fused)") and lines[-1].startswith("  fused 2,20,18: fp32 ")
    assert "bf16x3" in lines[-1] and "TFLOP/s (rel. err" in lines[-1]


def test_vit_fisher_precisions_reach_the_fused_kernel(monkeypatch):
    net = vit()
    layers = inject_adapters(net, "lora", 2)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    ref, _ = network_fisher(net, layers, [x])
    monkeypatch.setattr(fisher_fused, "INTERPRET", True)
    calls = spy(monkeypatch)
    for precision, tolerance in (("tf32", 1e-5), ("bf16", 3e-2)):
        del calls[:]
        sums, _ = network_fisher(net, layers, [x], precision=precision)
        assert calls and {c[2] for c in calls} == {precision}
        errors = [float((sums[k] - ref[k]).norm() / ref[k].norm()) for k in ref]
        assert max(errors) <= tolerance, (precision, errors)
        assert precision == "tf32" or min(errors) > 0  # bf16 really rounds
