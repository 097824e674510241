"""Replicas stay bitwise identical under DDP (gloo, 2 processes): an ImageFolder of varied image sizes,
a batch the world size does not divide, augmentation in the main process (--num_workers 0); after every
task each rank's whole model state (weights, heads, buffer, Fisher sums, GMMs, generators) has the same hash."""
import hashlib
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from tests.test_distributed_primitives import free_port

FAST = ["--num_epochs_pretuning", "1", "--num_epochs_align_pretuning", "1", "--num_samples_align_pretuning", "8",
        "--batch_size_align_pretuning", "4"]
RUNS = {
    "ita": ["--model", "ita", "--alpha_ita", "1", *FAST],
    "iel": ["--model", "iel", "--beta_iel", "1", *FAST],
    "ita_ca": ["--model", "ita", "--alpha_ita", "1", "--use_ca", "1", *FAST],  # end-of-task alignment
    "er": ["--model", "er", "--buffer_size", "5", "--minibatch_size", "3"],
    "sgd": ["--model", "sgd"],
}


def write_varied_folder(root: str) -> None:
    """4 classes, 5 train and 2 test images each, every image a different size and aspect ratio."""
    rng = np.random.RandomState(0)
    for split, n in (("train", 5), ("test", 2)):
        for c in range(4):
            os.makedirs(os.path.join(root, split, f"c{c}"))
            for i in range(n):
                h, w = 9 + 5 * i + c, 30 - 4 * i - c
                img = np.clip(rng.randint(0, 60, (h, w, 3)) + 60 * c, 0, 255).astype(np.uint8)
                Image.fromarray(img).save(os.path.join(root, split, f"c{c}", f"{i}.png"))


def state_hash(tree) -> str:
    h = hashlib.sha256()

    def walk(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                h.update(repr(k).encode())
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        else:
            h.update(repr(x).encode())
    walk(tree)
    return h.hexdigest()


def _worker(rank: int, port: int, folder: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)
    from models.utils.continual_model import ContinualModel
    from app.runner import run
    hashes: list[str] = []
    original = ContinualModel.meta_end_eval

    def record(self, dataset, accs):
        original(self, dataset, accs)
        hashes.append(state_hash(self.checkpoint_state()))
    ContinualModel.meta_end_eval = record
    common = ["--dataset", "seq-custom", "--data_path", os.path.join(folder, "data"), "--n_tasks", "2",
              "--img_size", "16", "--backbone", "vit_tiny", "--embed_dim", "32", "--depth", "1", "--num_heads", "2",
              "--lr", "0.05", "--n_epochs", "2", "--batch_size", "3", "--seed", "0", "--num_workers", "0",
              "--non_verbose", "--plots", "0", "--base_path", folder, "--distributed", "ddp", "--dist_timeout", "60"]
    for i, (name, extra) in enumerate(RUNS.items()):
        os.environ["MASTER_PORT"] = str(port + i)
        hashes.clear()
        run([*extra, *common, "--results_file", os.path.join(folder, f"{name}.json")])
        with open(os.path.join(folder, f"{name}_rank{rank}.txt"), "w") as fh:
            fh.write("\n".join(hashes))


@pytest.fixture(scope="module")
def replica_hashes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("replicas")
    write_varied_folder(str(folder / "data"))
    port = free_port()
    mp.start_processes(_worker, args=(port, str(folder)), nprocs=2, start_method="spawn", join=True)
    return folder


@pytest.mark.parametrize("name", sorted(RUNS))
def test_ranks_hold_identical_models_after_every_task(replica_hashes, name):
    ranks = [(replica_hashes / f"{name}_rank{r}.txt").read_text().split() for r in range(2)]
    assert len(ranks[0]) == 2, ranks  # one hash per task
    assert ranks[0] == ranks[1]
    assert ranks[0][0] != ranks[0][1]  # the state does change from task to task


def test_augmentation_is_seeded_per_sample_not_per_rank():
    """An item's augmentation depends on (index, seed) only, not on earlier items; the global RNGs are left as
    they were."""
    from datasets.utils.sources import ImageSource, TaskDataset
    from torchvision import transforms
    data = np.random.RandomState(0).randint(0, 255, (4, 12, 12, 3)).astype(np.uint8)
    ds = TaskDataset(ImageSource(data, [0, 1, 2, 3]), [0, 1, 2, 3],
                     transforms.Compose([transforms.RandomCrop(8), transforms.ToTensor()]))
    torch.manual_seed(5)
    before = torch.get_rng_state()
    a = ds[(2, 123)][0]
    ds[(0, 7)], ds[(1, 8)]
    assert torch.equal(ds[(2, 123)][0], a)
    assert any(not torch.equal(ds[(2, s)][0], a) for s in range(124, 130))
    assert torch.equal(torch.get_rng_state(), before)


def test_num_workers_does_not_change_the_run(tmp_path):
    """Augmenting in a worker process or in the main process gives the same training (same final weights)."""
    from app.runner import run
    write_varied_folder(str(tmp_path / "data"))
    hashes = []
    for workers in ("0", "1"):
        res = run(["--model", "sgd", "--dataset", "seq-custom", "--data_path", str(tmp_path / "data"),
                   "--n_tasks", "2", "--img_size", "16", "--backbone", "vit_tiny", "--embed_dim", "32", "--depth",
                   "1", "--num_heads", "2", "--lr", "0.05", "--n_epochs", "1", "--batch_size", "3", "--seed", "0",
                   "--num_workers", workers, "--non_verbose", "--plots", "0", "--base_path", str(tmp_path),
                   "--stop_after", "1", "--savecheck", "task", "--ckpt_name", f"w{workers}",
                   "--checkpoint_path", str(tmp_path / "ckpt"), "--results_file", str(tmp_path / f"{workers}.json")])
        assert res["tasks_done"] == 1
        from utils import checkpoints
        state = checkpoints.load_checkpoint(str(tmp_path / "ckpt" / f"w{workers}" / "task_1.pt"))
        hashes.append(state_hash(state["model_state"]))
    assert hashes[0] == hashes[1]


# ----- device augmentation: 2 ranks equal one process ----------------------------------------------------------
AUGMENTED = ["--dataset", "seq-cifar100-224", "--gpu_augmentation", "1", "--device", "cpu", "--backbone", "vit_tiny",
             "--embed_dim", "32", "--depth", "1", "--num_heads", "2", "--lr", "0.01", "--n_epochs", "2",
             "--batch_size", "4", "--eval_batch_size", "20", "--seed", "0", "--num_workers", "0", "--stop_after", "2",
             "--non_verbose", "--plots", "0"]
FREE_BYTES = {1: 40_000_000, 2: (64_000_000, 40_000_000)}  # free memory per rank, as the stand-in device reports it
PROBE_BYTES = 4_000_000  # peak of the statistics probe's Fisher pass (whatever the images: per image 8/world)


def _augmented_worker(rank: int, world: int, port: int, folder: str, name: str, extra: list) -> None:
    """One rank of a run with device augmentation; the model state and the automatic statistics batch after every
    task go to ``<name>_rank<r>.pt``. Memory queries answer as on an accelerator with the rank's free memory."""
    if world > 1:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(1)
    from app.runner import run
    from models.utils.continual_model import ContinualModel
    from utils import accelerator
    free = FREE_BYTES[world] if world == 1 else FREE_BYTES[world][rank]
    accelerator.free_memory = lambda device: free
    accelerator.measure_peak = lambda device, work: (work(), PROBE_BYTES)[1]
    states: list = []
    original = ContinualModel.meta_end_eval

    def record(self, dataset, accs):
        original(self, dataset, accs)
        flat = {}

        def walk(x, path):
            if isinstance(x, torch.Tensor):
                flat[path] = x.detach().clone()
            elif isinstance(x, dict):
                for k, v in x.items():
                    walk(v, f"{path}/{k}")
        walk(self.checkpoint_state(), "")
        states.append({"tensors": flat, "stats_batch": self.stats.auto_stats_batch})
    ContinualModel.meta_end_eval = record
    ddp = ["--distributed", "ddp", "--dist_timeout", "60"] if world > 1 else []
    run([*extra, *AUGMENTED, "--base_path", os.path.join(folder, "data"), *ddp,
         "--results_file", os.path.join(folder, f"{name}_{world}.json")])
    torch.save(states, os.path.join(folder, f"{name}_{world}_rank{rank}.pt"))


AUGMENTED_RUNS = {"ita": RUNS["ita"], "iel": RUNS["iel"]}
# fp32 tolerance, as a fraction of each tensor's largest value: the rounding of the 2-rank sums, grown by training
# (measured: at most 1.2e-4 for ITA, 1.9e-4 for IEL; the same crop on both ranks' k-th images differs by ~0.1). Two
# single-process IEL runs that differ only in --stats_batch_size (rounding of features and Fisher sums) differ by
# 5.8e-4 after the second task at this learning rate, by 5e-2 at --lr 0.05 (training amplifies rounding).
TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def augmented_runs(tmp_path_factory):
    from tests.dataset_builders import write_cifar100
    folder = tmp_path_factory.mktemp("augmented")
    write_cifar100(str(folder / "data"), per_class_train=2)
    for name, extra in AUGMENTED_RUNS.items():
        for world in (1, 2):
            mp.start_processes(_augmented_worker, args=(world, free_port(), str(folder), name, extra), nprocs=world,
                               start_method="spawn", join=True)
    return folder


@pytest.mark.parametrize("name", sorted(AUGMENTED_RUNS))
def test_two_ranks_with_device_augmentation_equal_one_process(augmented_runs, name):
    """After every task, each rank's model (adapters, heads, Fisher sums, GMMs) equals the single-process model
    trained on the same global batches (same crop and flip per global image index), to fp32 tolerance; the ranks
    agree on the automatic statistics batch (the smallest of their sizes: 16 from 40 MB free, not 32 from 64 MB)."""
    single = torch.load(augmented_runs / f"{name}_1_rank0.pt", weights_only=True)
    ranks = [torch.load(augmented_runs / f"{name}_2_rank{r}.pt", weights_only=True) for r in range(2)]
    assert len(single) == 2 and all(len(r) == 2 for r in ranks)
    for task in range(2):
        assert single[task]["stats_batch"] == 40  # 0.5 * 40 MB / (4 MB / 8 images), a multiple of 8
        assert ranks[0][task]["stats_batch"] == ranks[1][task]["stats_batch"] == 16  # 0.5 * 40 MB / (4 MB / 4)
        ref = single[task]["tensors"]
        assert ref and ranks[0][task]["tensors"].keys() == ref.keys() == ranks[1][task]["tensors"].keys()
        for r in range(2):
            for key, value in ref.items():
                got, value = ranks[r][task]["tensors"][key].float(), value.float()
                error = float((got - value).abs().max()) / max(float(value.abs().max()), 1e-3)
                assert error <= TOLERANCE, (task, r, key, error)
