"""The Fisher of the second_order model under DDP (gloo, 2 processes) equals the single-process Fisher."""
import os

import torch
import torch.multiprocessing as mp
from torch import nn

from models.second_order_utils.fisher import network_fisher, reduce_fisher
from models.second_order_utils.modules import inject_adapters
from tests.test_distributed_primitives import free_port
from utils import distributed as D


def make_setup():
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4))
    layers = inject_adapters(body, "lora", 2)
    images = torch.randn(10, 5)
    return body, layers, images


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    D.init_from_env(timeout_seconds=60, device_name="cpu")
    try:
        body, layers, images = make_setup()
        shard = images[:3] if rank == 0 else images[3:]  # unequal shards
        sums, n = reduce_fisher(*network_fisher(body, layers, shard.split(2)))
        torch.save({"sums": sums, "n": n}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        D.shutdown()


def test_two_rank_fisher_equals_single_process(tmp_path):
    mp.start_processes(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, start_method="spawn", join=True)
    body, layers, images = make_setup()
    ref, n = network_fisher(body, layers, images.split(4))
    assert reduce_fisher(ref, n)[1] == 10  # single process: unchanged
    for r in range(2):
        res = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        assert res["n"] == 10
        for name, value in ref.items():
            assert value.abs().max() > 0
            assert torch.allclose(res["sums"][name], value, rtol=1e-5, atol=1e-8)
