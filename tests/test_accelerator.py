"""utils/accelerator.py: the one module that names device types, its CPU answers, and its answers for a backend
that reports memory and RNG states through its device module (a stand-in module, as a PrivateUse1 backend
registered from Python provides one)."""
import os
import re
import warnings

import pytest
import torch

from utils import accelerator, checkpoints, seeding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_DIRS = ("app", "backbone", "benchmarks", "datasets", "mammoth_compat", "models", "utils")
DEVICE_TYPE_TESTS = re.compile(r"""[=!]=\s*["']cuda["']|\.is_cuda\b|torch\.cuda\.|startswith\(\s*["']cuda""")


def source_files():
    yield os.path.join(ROOT, "main.py")
    for top in SOURCE_DIRS:
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            yield from (os.path.join(folder, f) for f in files if f.endswith(".py"))


def test_no_module_but_the_accelerator_module_names_a_device_type():
    own = os.path.join(ROOT, "utils", "accelerator.py")
    found = []
    for path in source_files():
        if path == own:
            continue
        with open(path) as fh:
            for i, line in enumerate(fh, 1):
                if DEVICE_TYPE_TESTS.search(line):
                    found.append(f"{os.path.relpath(path, ROOT)}:{i}: {line.strip()}")
    assert not found, "device-type checks outside utils/accelerator.py:\n" + "\n".join(found)


def test_the_pattern_catches_the_usual_spellings():
    for line in ('if device.type == "cuda":', "x.type != 'cuda'", "torch.cuda.synchronize(d)", "p.is_cuda",
                 'name.startswith("cuda")'):
        assert DEVICE_TYPE_TESTS.search(line), line


def test_cpu_answers_are_the_documented_fallbacks():
    cpu = torch.device("cpu")
    assert not accelerator.is_accelerator(cpu) and accelerator.free_memory(cpu) is None
    assert accelerator.peak_memory(cpu) is None and accelerator.memory_allocated(cpu) is None
    assert accelerator.batch_for_memory(cpu, 1e6, fallback=64) == 64
    assert not accelerator.pin_memory(cpu) and not accelerator.pin_memory(None)
    assert not accelerator.fused_optimizer([torch.zeros(2)])
    assert accelerator.autocast_type(cpu) == "cpu"
    accelerator.synchronize(cpu)  # a no-op
    assert accelerator.device_name(cpu) == "cpu"
    assert accelerator.measure_peak(cpu, lambda: None) is None
    assert accelerator.process_group_backend(cpu) == "gloo"


def test_fit_batch_takes_the_largest_multiple_of_8_in_range():
    assert accelerator.fit_batch(1e6, 1e9) == 496
    assert accelerator.fit_batch(1e9, 1e9) == 8 and accelerator.fit_batch(1.0, 1e12) == 1024


def test_a_bad_or_absent_device_is_one_line():
    from utils.errors import UserError
    with pytest.raises(UserError, match="bad --device"):
        accelerator.check_device("gpu0")
    if not accelerator.is_available("cuda"):
        with pytest.raises(UserError, match="cuda is not available"):
            accelerator.check_device("cuda:0")


class StandIn:
    """A backend's device module: memory from a budget, per-device RNG states, a synchronisation counter."""

    def __init__(self, devices: int = 2, budget: int = 1 << 30):
        self.devices, self.budget, self.allocated, self.peak, self.syncs = devices, budget, 0, 0, 0
        self.states = {i: torch.Generator().manual_seed(100 + i).get_state() for i in range(devices)}

    def is_available(self):
        return True

    def device_count(self):
        return self.devices

    def current_device(self):
        return 0

    def synchronize(self, device=None):
        self.syncs += 1

    def mem_get_info(self, device=None):
        return self.budget - self.allocated, self.budget

    def memory_allocated(self, device=None):
        return self.allocated

    def max_memory_allocated(self, device=None):
        return self.peak

    def reset_peak_memory_stats(self, device=None):
        self.peak = self.allocated

    def allocate(self, n):
        self.allocated += n
        self.peak = max(self.peak, self.allocated)

    def get_rng_state(self, index=0):
        return self.states[index].clone()

    def set_rng_state(self, state, index=0):
        if index >= self.devices:
            raise RuntimeError(f"invalid device ordinal {index}")
        self.states[index] = state.clone()


@pytest.fixture
def stand_in(monkeypatch):
    """Device type ``cuda`` answered by a :class:`StandIn` (the CPU machine has none)."""
    module = StandIn()
    real = accelerator.device_module
    monkeypatch.setattr(accelerator, "device_module",
                        lambda d: module if accelerator.as_device(d).type == "cuda" else real(d))
    monkeypatch.setattr(accelerator, "current_type", lambda: "cuda")
    return module


def test_memory_queries_go_through_the_device_module(stand_in):
    dev = torch.device("cuda", 0)
    stand_in.allocated = 100
    assert accelerator.free_memory(dev) == (1 << 30) - 100
    assert accelerator.measure_peak(dev, lambda: (stand_in.allocate(800), stand_in.allocate(-800))) == 800
    assert stand_in.syncs == 2  # before and after the measured work
    # half of the free memory at 1 MiB per item: 511.99 -> 504 (a multiple of 8)
    assert accelerator.batch_for_memory(dev, 2 ** 20, fallback=64) == 504
    assert accelerator.peak_memory_mib(dev) == pytest.approx(900 / 2 ** 20)


def test_pinned_memory_and_fused_optimisers_by_type(stand_in, monkeypatch):
    assert accelerator.pin_memory("cuda:0")
    monkeypatch.setattr(accelerator, "current_type", lambda: "npu")
    assert not accelerator.pin_memory("cuda:0")  # not torch's accelerator: pageable memory
    meta = [torch.empty(2, device="meta")]
    assert not accelerator.fused_optimizer(meta) and not accelerator.fused_optimizer([torch.zeros(1)] + meta)


def test_checkpoint_rng_states_round_trip_and_fewer_devices_restore_what_exists(stand_in):
    saved = checkpoints.rng_state()
    assert saved["device"]["type"] == "cuda" and len(saved["device"]["states"]) == 2
    stand_in.states = {i: torch.Generator().manual_seed(7).get_state() for i in range(2)}
    checkpoints.set_rng_state(saved)
    assert all(torch.equal(stand_in.states[i], saved["device"]["states"][i]) for i in range(2))
    # written on a machine with 2 devices, restored on one with 1: a warning, device 0 restored
    stand_in.devices = 1
    stand_in.states = {0: torch.Generator().manual_seed(7).get_state()}
    with pytest.warns(UserWarning, match="RNG states of 2 cuda devices, this machine has 1"):
        checkpoints.set_rng_state(saved)
    assert torch.equal(stand_in.states[0], saved["device"]["states"][0])
    # the layout written before the device-generic one ("cuda": list of states)
    legacy = {k: v for k, v in saved.items() if k != "device"}
    legacy["cuda"] = [torch.Generator().manual_seed(9).get_state()] * 3
    with pytest.warns(UserWarning, match="3 cuda devices"):
        checkpoints.set_rng_state(legacy)
    assert torch.equal(stand_in.states[0], legacy["cuda"][0])


def test_a_checkpoint_of_another_accelerator_type_leaves_the_rngs_alone(stand_in):
    before = {i: s.clone() for i, s in stand_in.states.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        accelerator.set_rng_states({"type": "mps", "states": [torch.zeros(8, dtype=torch.uint8)]})
    assert all(torch.equal(before[i], stand_in.states[i]) for i in before)


def test_seeded_seeds_and_restores_the_named_devices_rng(stand_in, monkeypatch):
    seeds = []
    monkeypatch.setattr(accelerator, "seed_rng", lambda d, s: (seeds.append((str(d), s)),
                                                               stand_in.set_rng_state(torch.full((4,), s % 251,
                                                                                                 dtype=torch.uint8))))
    before = stand_in.get_rng_state(0)
    with seeding.seeded(1234, "cuda:0"):
        assert torch.equal(stand_in.get_rng_state(0), torch.full((4,), 1234 % 251, dtype=torch.uint8))
    assert seeds == [("cuda:0", 1234)]
    assert torch.equal(stand_in.get_rng_state(0), before)  # the block consumed nothing outside it
    with seeding.seeded(5):  # no device: the accelerator's RNG is not touched
        pass
    assert seeds == [("cuda:0", 1234)]


def test_the_virtual_batch_retry_runs_after_the_failed_pass_is_released():
    """--vbs_mode batched: when the group's one large pass runs out of memory, the micro-batches are retried one by
    one outside the exception handler, so the failed pass's graph (held by its traceback) is freed first."""
    import sys
    import weakref

    from models.second_order_utils.stepping import VirtualBatches
    graphs, seen = [], []

    def backward(micro_batches, group):
        if len(micro_batches) > 1:
            graph = torch.ones(1000)  # what the failed pass holds
            graphs.append(weakref.ref(graph))
            raise accelerator.OutOfMemoryError("out of memory (simulated)")
        seen.append((sys.exc_info()[0], graphs[0]() is None))
        return micro_batches[0][0].sum()

    steps, zeroed = [], []
    vb = VirtualBatches()
    for i in range(2):
        vb.observe(torch.full((2,), float(i)), torch.zeros(2), 2, "batched", backward, lambda: steps.append(1),
                   lambda: zeroed.append(1))
    assert seen == [(None, True), (None, True)]  # not inside the handler, the failed graph already freed
    assert steps == [1] and zeroed == [1] and float(vb.last_loss) == 1.0  # mean of the micro-batch losses 0 and 2
