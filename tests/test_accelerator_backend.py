"""The suite's test accelerator itself (tests/accelerator_backend.py): a device type of its own, mixed ops raise
as on CUDA, memory answers from the budget, its own RNG, CUDA's autocast policy, counted host/device traffic.
Run in a child process: a PrivateUse1 backend registers once per process."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = r'''
import torch
from tests import accelerator_backend as B
from utils import accelerator

d = B.register()
assert d.type == "testacc" and B.register() == d
a = torch.arange(12.).reshape(3, 4).to(d)
assert a.device == d and not a.is_cpu and accelerator.is_accelerator(a.device)
assert torch.equal((a @ a.T).cpu(), torch.arange(12.).reshape(3, 4) @ torch.arange(12.).reshape(3, 4).T)

# mixing with a non-scalar CPU tensor raises; CPU scalars and CPU index tensors are fine (as on CUDA)
for bad in (lambda: a + torch.ones(3, 4), lambda: torch.cat([a, torch.ones(1, 4)]), lambda: a.index_select(0, torch.tensor([0]).to(d)) + torch.ones(1, 4)):
    try:
        bad()
    except B.MixedDeviceError:
        pass
    else:
        raise AssertionError("a mixed op did not raise")
assert (a * torch.tensor(2.0)).device == d and a[torch.tensor([0, 2])].shape == (2, 4)

# the device's own generator, seeded, repeats its draws; its global RNG state is not the CPU's
g = torch.Generator(device=d)
assert g.device == d
x1 = torch.rand(4, device=d, generator=g.manual_seed(1)).cpu()
x2 = torch.rand(4, device=d, generator=g.manual_seed(1)).cpu()
assert torch.equal(x1, x2)
state = accelerator.get_rng_state(d)
y1 = torch.randn(5, device=d).cpu()
cpu_before = torch.get_rng_state()
accelerator.set_rng_state(d, state)
assert torch.equal(torch.randn(5, device=d).cpu(), y1) and torch.equal(torch.get_rng_state(), cpu_before)

# memory from the budget; past it, an out-of-memory error
B.set_memory_budget(10 * 2 ** 20)
free, total = torch.get_device_module(d).mem_get_info()
assert total == 10 * 2 ** 20 and free == total - B.MEMORY.allocated
before = accelerator.memory_allocated(d)
big = torch.empty(2 ** 20, device=d)  # 4 MiB
assert accelerator.memory_allocated(d) == before + 4 * 2 ** 20 and accelerator.free_memory(d) <= 6 * 2 ** 20
del big
assert accelerator.memory_allocated(d) == before
try:
    torch.empty(4 * 2 ** 20, device=d)
except torch.OutOfMemoryError:
    pass
else:
    raise AssertionError("the budget was not enforced")

# CUDA's autocast policy: matmuls in bf16, softmax in fp32, gradients back in the parameters' dtype
lin = torch.nn.Linear(4, 2).to(d)
with torch.autocast("testacc", dtype=torch.bfloat16):
    y = lin(a)
    assert y.dtype == torch.bfloat16 and torch.softmax(y, -1).dtype == torch.float32
y.float().sum().backward()
assert lin.weight.grad.dtype == torch.float32 and lin.weight.grad.device == d

# traffic: uploads, downloads, value reads, data-dependent shapes
B.reset_counts()
z = torch.ones(3).to(d)
z.sum().item()
z.cpu()
torch.nonzero(z)
assert dict(B.COUNTS) == {"to_device": 1, "to_host": 2, "syncs": 1}, dict(B.COUNTS)
# torch.save of device tensors (a checkpoint) loads with weights_only=True, as a CUDA one with map_location="cpu"
import io
buf = io.BytesIO()
torch.save({"w": lin.weight.detach(), "p": lin.weight}, buf)
buf.seek(0)
loaded = torch.load(buf, map_location="cpu", weights_only=True)
assert loaded["w"].device.type == "cpu" and torch.equal(loaded["p"].detach(), lin.weight.detach().cpu())
print("ok")
'''


def test_test_accelerator_behaves_like_a_device():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
