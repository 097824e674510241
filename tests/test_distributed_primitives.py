"""The DDP building blocks on the CPU with gloo and 2 processes."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from utils import distributed as D


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    D.init_from_env(timeout_seconds=60, device_name="cpu")
    try:
        results = {}
        # variable-length gather, in rank order
        results["gather"] = D.all_gather_cat(torch.arange(rank + 1, dtype=torch.float32) + 10 * rank)
        results["sum"] = D.all_reduce_sum(torch.tensor([float(rank + 1)]))
        # gradient averaging through the optimizer hook equals the gradient of the mean loss
        torch.manual_seed(0)
        layer = torch.nn.Linear(3, 2)
        opt = torch.optim.SGD(layer.parameters(), lr=1.0)
        D.average_gradients_before_step(opt)
        x = torch.full((4, 3), float(rank + 1))
        layer(x).pow(2).mean().backward()
        before = layer.weight.detach().clone()
        opt.step()
        results["step"] = before - layer.weight.detach()
        results["eval_shard"] = torch.tensor(list(iter(D.ShardSampler(7))))
        from models.utils.buffer import Buffer
        torch.manual_seed(100 + rank)  # ranks' global RNGs differ, as after different augmentations
        buffer = Buffer(5)
        for step in range(3):
            buffer.add_data(examples=torch.full((3, 2), float(10 * step + rank)), labels=torch.full((3,), rank))
        results["buffer"] = buffer.examples.clone()
        results["buffer_seen"] = torch.tensor(buffer.num_seen_examples)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        D.shutdown()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.start_processes(_worker, args=(2, free_port(), str(out)), nprocs=2, start_method="spawn", join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_collectives(two_rank_results):
    for res in two_rank_results:
        assert res["gather"].tolist() == [0.0, 10.0, 11.0]
        assert res["sum"].item() == 3.0


def test_gradient_average_equals_single_process_gradient(two_rank_results):
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    x = torch.cat([torch.full((4, 3), 1.0), torch.full((4, 3), 2.0)])
    layer(x).pow(2).mean().backward()  # the mean over both shards
    for res in two_rank_results:
        torch.testing.assert_close(res["step"], layer.weight.grad)


def test_shards_partition_the_data_without_padding(two_rank_results):
    assert two_rank_results[0]["eval_shard"].tolist() == [0, 2, 4, 6]
    assert two_rank_results[1]["eval_shard"].tolist() == [1, 3, 5]


def test_single_process_fallbacks():
    t = torch.tensor([1.0, 2.0])
    assert D.all_reduce_sum(t) is t and D.all_gather_cat(t) is t
    assert D.world_size() == 1 and D.rank() == 0 and D.is_main_process()
    assert list(iter(D.ShardSampler(3))) == [0, 1, 2] and len(D.ShardSampler(3)) == 3


def test_replay_buffer_is_identical_on_every_rank(two_rank_results):
    a, b = (r["buffer"] for r in two_rank_results)
    assert torch.equal(a, b)
    assert int(two_rank_results[0]["buffer_seen"]) == 18  # both ranks' examples were offered
    # the reservoir of the global stream (per step: rank 0's 3 rows, then rank 1's) with the shared generator
    from models.utils.buffer import reservoir_index
    torch.manual_seed(100)  # rank 0's RNG, whose draw seeds the shared generator
    generator = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (1,)).item()))
    expected, seen = torch.zeros(5, 2), 0
    for step in range(3):
        for value in [10.0 * step] * 3 + [10.0 * step + 1] * 3:
            slot = reservoir_index(seen, 5, generator)
            seen += 1
            if slot >= 0:
                expected[slot] = value
    assert torch.equal(a, expected), (a[:, 0].tolist(), expected[:, 0].tolist())
