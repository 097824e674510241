"""The bf16x3 split (utils/split_precision.py): three bf16 products with fp32 sums, against float64 and against the
definition summed by hand; every product kind under the mode, forward and backward; the Fisher pass in bf16x3;
the same on the suite's test accelerator (a child process: a PrivateUse1 backend registers once per process)."""
import contextlib
import os
import subprocess
import sys

import pytest
import torch

from utils.split_precision import Bf16x3, bf16x3_mm, split_bf16

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def by_hand(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """hi_a hi_b + hi_a lo_b + lo_a hi_b in float64 (exact products, exact sums)."""
    (ah, al), (bh, bl) = split_bf16(a), split_bf16(b)
    ah, al, bh, bl = (t.double() for t in (ah, al, bh, bl))
    return ah @ bh + ah @ bl + al @ bh


def test_split_parts_rebuild_the_operand_to_16_bits():
    x = torch.randn(1000) * torch.logspace(-20, 20, 1000)
    hi, lo = split_bf16(x)
    assert hi.dtype == lo.dtype == torch.bfloat16
    assert float(((hi.double() + lo.double() - x.double()).abs() / x.double().abs()).max()) <= 2 ** -16


@pytest.mark.parametrize("shape", [((37, 211), (211, 19)), ((3, 13, 197), (3, 197, 40))])
def test_product_is_the_three_term_sum_and_near_fp32(shape):
    torch.manual_seed(0)
    a, b = torch.randn(shape[0]), torch.randn(shape[1])
    out = bf16x3_mm(a, b)
    exact = a.double() @ b.double()
    assert out.dtype == torch.float32 and out.shape == exact.shape
    assert rel(out, by_hand(a, b)) <= 1e-6  # the definition, up to fp32 summation
    err, bf16_err = rel(out, exact), rel(a.bfloat16() @ b.bfloat16(), exact)
    assert err <= 2e-5 and err < bf16_err / 100  # about 2^-17, a hundred times below one bf16 product
    assert not torch.equal(out, a @ b)  # the split really ran


def test_mode_covers_every_product_forward_and_backward():
    torch.manual_seed(1)
    x = torch.randn(6, 9, 24, dtype=torch.float32)
    w, bias = torch.randn(16, 24), torch.randn(16)
    ref = {}
    for split in (False, True):
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, bias))
        mode = Bf16x3() if split else None
        with mode if mode else contextlib.nullcontext():
            y = torch.nn.functional.linear(xs, ws, bs)  # addmm / mm
            z = torch.baddbmm(y[:, :, :9], xs, xs.transpose(1, 2), beta=0.5, alpha=2.0)  # baddbmm
            loss = (y.square().sum() + z.square().sum() + torch.einsum("bto,bti->oi", y, xs).square().sum())
            loss.backward()
        out = {"y": y.detach(), "z": z.detach(), "gx": xs.grad, "gw": ws.grad, "gb": bs.grad}
        if split:
            assert mode.calls >= 8  # forward and backward products all went through the split
            for k, v in out.items():
                assert 0 < rel(v, ref[k]) <= 1e-4, k
        ref = out


def test_other_dtypes_pass_through():
    a = torch.randn(4, 5, dtype=torch.float64)
    with Bf16x3() as mode:
        out = a @ a.t()
    assert mode.calls == 0 and out.dtype == torch.float64 and torch.equal(out, a @ a.t())


ACCELERATOR = r'''
import torch
from tests import accelerator_backend as B
from utils.split_precision import Bf16x3, bf16x3_mm
d = B.register()
torch.manual_seed(0)
a, b = torch.randn(20, 50), torch.randn(50, 7)
with Bf16x3() as mode:
    out = a.to(d) @ b.to(d)
assert out.device == d and mode.calls == 1
assert torch.equal(out.cpu(), bf16x3_mm(a, b)), "the device computes what the CPU computes"
print("ok")
'''


def test_split_on_the_test_accelerator():
    res = subprocess.run([sys.executable, "-c", ACCELERATOR], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


TRITON = r'''
import os
os.environ["TRITON_INTERPRET"] = "1"  # Triton's CPU interpreter: the GPU kernel's code on CPU tensors
import torch
from utils.split_precision import Bf16x3
from utils.split_precision_triton import bf16x3_mm_triton


def by_hand(a, b):  # torch's split (casts round to nearest even), products and sums in float64
    ah, bh = a.bfloat16(), b.bfloat16()
    al, bl = (a - ah.float()).bfloat16(), (b - bh.float()).bfloat16()
    ah, al, bh, bl = (t.double() for t in (ah, al, bh, bl))
    return ah @ bh + ah @ bl + al @ bh


torch.manual_seed(0)
cases = [(torch.randn(37, 70), torch.randn(70, 19)),  # no dimension a multiple of the blocks
         (torch.randn(3, 13, 97), torch.randn(3, 97, 40)),  # batched
         (torch.randn(70, 130).t(), torch.randn(65, 70).t()),  # transposed strides, 128-row tiles
         (torch.randn(20, 33), torch.randn(33, 140)),  # 128-column tiles, two of them
         (torch.randn(5, 0), torch.randn(0, 4))]  # empty inner dimension
for a, b in cases:
    out = bf16x3_mm_triton(a, b)
    exact, hand = a.double() @ b.double(), by_hand(a, b)
    assert out.dtype == torch.float32 and out.shape == exact.shape
    if a.shape[-1] == 0:
        assert torch.equal(out, torch.zeros_like(out))
        continue
    assert float((out.double() - hand).norm() / hand.norm()) <= 1e-6, "torch's split, as three products"
    assert float((out.double() - exact).norm() / exact.norm()) <= 1e-4
    assert not torch.equal(out, a @ b)
from utils import accelerator
accelerator.fused_kernels_available = lambda device: True  # as on CUDA: "auto" picks the kernel
x, w = torch.randn(6, 9, 24), torch.randn(16, 24)
with Bf16x3() as mode:
    y = torch.nn.functional.linear(x, w)
assert mode.calls == 1 and float((y.double() - x.double() @ w.double().t()).norm() / y.norm()) <= 1e-4
print("ok")
'''


def test_triton_kernel_in_the_interpreter():
    res = subprocess.run([sys.executable, "-c", TRITON], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


def test_auto_kernel_is_torch_off_triton_devices():
    with Bf16x3() as mode:
        out = torch.randn(4, 8) @ torch.randn(8, 3)
    assert mode.kernel == "auto" and mode.calls == 1 and out.dtype == torch.float32
    with pytest.raises(ValueError, match="unknown bf16x3 kernel"):
        Bf16x3(kernel="cuda")


def test_split_gemm_benchmark_reports_errors_beside_fp32(tmp_path):
    import json

    from benchmarks import split_gemm
    out = tmp_path / "split.json"
    assert split_gemm.main(["--quick", "--repeats", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["device"] == "cpu" and sorted(res["results"]) == sorted(split_gemm.SHAPES)
    for r in res["results"].values():
        forms = r["forms"]
        assert sorted(forms) == ["bf16x3_torch", "fp32"]  # no TF32 or Triton on a CPU
        assert forms["fp32"]["rel_err"] < 1e-6 and forms["fp32"]["speedup_vs_fp32"] == 1.0
        assert forms["fp32"]["rel_err"] < forms["bf16x3_torch"]["rel_err"] < 2e-5
        assert all(f["seconds"] > 0 and f["tflops"] > 0 for f in forms.values())


def compiled_ptx(arch: int, bm: int = 128, bn: int = 128) -> str:
    """PTX of the bf16x3 kernel as a GPU of compute capability ``arch`` runs it (no GPU needed to compile)."""
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile as triton_compile

    from utils import split_precision_triton as spt
    kernel = spt._bf16x3_kernel
    signature = {name: "*fp32" for name in ("a_ptr", "b_ptr", "c_ptr")}
    signature.update({name: "i32" for name in kernel.arg_names[3:15]})
    consts = dict(BM=bm, BN=bn, BK=spt.BLOCK_K, DOT_DTYPE=tl.bfloat16, INPUT_PRECISION=None)
    signature.update({name: "constexpr" for name in consts})
    source = ASTSource(kernel, signature, constexprs={(kernel.arg_names.index(k),): v for k, v in consts.items()})
    return triton_compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": 8}).asm["ptx"]


@pytest.mark.parametrize("arch", [80, 90])
def test_triton_kernel_compiles_to_bf16_tensor_core_products(arch):
    ptx = compiled_ptx(arch)
    mma = "wgmma" if arch == 90 else "mma.sync"
    assert mma in ptx and "bf16" in ptx and "tf32" not in ptx  # bf16 tensor-core products, no TF32


CUDA_PATH = r'''
import os
os.environ["TRITON_INTERPRET"] = "1"
import torch
from models.second_order_utils import fisher_fused
from models.second_order_utils.fisher import network_fisher
from models.second_order_utils.modules import inject_adapters
from tests.test_fisher_exact import rel_err, vit
from tests.test_second_order_math import brute_force_fisher
from utils import accelerator

net = vit()
layers = inject_adapters(net, "lora", 2)
x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(6))
ref = brute_force_fisher(net, layers, x)
# as on CUDA with triton: the bf16x3 products in the split kernel, the squares in the fused kernel
accelerator.fused_kernels_available = lambda device: True
fisher_fused.INTERPRET = True
from utils import split_precision_triton
products, fused = [], []
real_split, real_fused = split_precision_triton.bf16x3_mm_triton, fisher_fused.fused_sq_grads
split_precision_triton.bf16x3_mm_triton = lambda a, b: products.append(a.shape) or real_split(a, b)
fisher_fused.fused_sq_grads = lambda g, x, precision, **k: fused.append(precision) or real_fused(g, x, precision, **k)
for class_batch in (1, 3):
    sums, n = network_fisher(net, layers, [x[:2], x[2:]], precision="bf16x3", class_batch=class_batch)
    assert n == 3 and rel_err(sums, ref) <= 1e-4, rel_err(sums, ref)
assert products and fused and set(fused) == {"bf16x3"}
print("ok", len(products), len(fused))
'''


def test_cuda_default_fisher_path_in_the_interpreter():
    """The Fisher as a CUDA run computes it by default (bf16x3 products in the split kernel, squares summed in the
    fused kernel), both kernels in Triton's CPU interpreter, against the brute-force per-sample Fisher."""
    res = subprocess.run([sys.executable, "-c", CUDA_PATH], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stderr[-3000:]
