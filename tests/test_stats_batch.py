"""The automatic statistics batch (``--stats_batch_size`` auto) on a device that reports its free memory: the probe
runs the Fisher pass on the images the Fisher sees (device-augmented to 224 px, not the 32 px sources), with
gradients on although the features pass runs under ``no_grad``, and changes no result: the run equals runs with the
batch given explicitly."""
import pytest
import torch

from models.second_order_utils import task_stats
from utils import accelerator

FREE = 40_000_000  # bytes the stand-in device reports free
PROBE = 4_000_000  # peak bytes of the probe's Fisher pass on its 8 images


def flat_state(model) -> dict[str, torch.Tensor]:
    out = {}

    def walk(x, path):
        if isinstance(x, torch.Tensor):
            out[path] = x.detach().clone()
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{path}/{k}")
    walk(model.checkpoint_state(), "")
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from tests.dataset_builders import write_cifar100
    base = tmp_path_factory.mktemp("stats_batch")
    write_cifar100(str(base), per_class_train=2)
    return base


def run_with(data, tmp_path, monkeypatch, *extra):
    """A 2-task ITA run on seq-cifar100-224 with device augmentation; the model's state after it and the probes."""
    from app.runner import run
    from models.utils.continual_model import ContinualModel
    probes, states = [], []
    real_probe = task_stats.probe_bytes_per_image

    def probe(forward, layers, images, precision="fp32"):
        probes.append({"shape": tuple(images.shape), "grad_enabled_by_caller": torch.is_grad_enabled()})
        return real_probe(forward, layers, images, precision)

    def measure_peak(device, work):
        sums, n = work()  # the real Fisher pass of the probe
        probes[-1].update(images=n, fisher_total=float(sum(v.sum() for v in sums.values())))
        return PROBE

    monkeypatch.setattr(task_stats, "probe_bytes_per_image", probe)
    monkeypatch.setattr(accelerator, "free_memory", lambda device: FREE)
    monkeypatch.setattr(accelerator, "measure_peak", measure_peak)
    original = ContinualModel.meta_end_eval

    def record(self, dataset, accs):
        original(self, dataset, accs)
        states.append((flat_state(self), self.stats.stats_batch_size(dataset)))
    monkeypatch.setattr(ContinualModel, "meta_end_eval", record)
    run(["--model", "ita", "--alpha_ita", "1", "--num_epochs_pretuning", "1", "--num_epochs_align_pretuning", "1",
         "--num_samples_align_pretuning", "8", "--batch_size_align_pretuning", "4", "--dataset", "seq-cifar100-224",
         "--gpu_augmentation", "1", "--device", "cpu", "--backbone", "vit_tiny", "--embed_dim", "32", "--depth", "1",
         "--num_heads", "2", "--lr", "0.05", "--n_epochs", "1", "--batch_size", "4", "--seed", "0",
         "--num_workers", "0", "--stop_after", "2", "--non_verbose", "--plots", "0", "--base_path", str(data),
         "--results_file", str(tmp_path / "r.json"), "--checkpoint_path", str(tmp_path / "ckpt"), *extra])
    return states, probes


def test_the_probe_sees_the_fishers_images_with_gradients_and_changes_no_result(data, tmp_path, monkeypatch):
    auto, probes = run_with(data, tmp_path, monkeypatch)
    assert len(probes) == 1  # measured once per run
    probe = probes[0]
    assert probe["shape"] == (8, 3, 224, 224)  # augmented and resized as the Fisher's batches, not 32 px sources
    assert probe["grad_enabled_by_caller"] is False  # called from the features pass under no_grad ...
    assert probe["images"] == 8 and probe["fisher_total"] > 0  # ... and still a real Fisher pass
    assert [size for _, size in auto] == [40, 40]  # 0.5 * 40 MB / (4 MB / 8 images), a multiple of 8
    for extra in (["--stats_batch_size", "40"], ["--stats_batch_size", "8"]):
        given, none = run_with(data, tmp_path, monkeypatch, *extra)
        assert none == []  # a given batch size runs no probe
        for (ref, _), (got, _) in zip(auto, given):
            assert ref.keys() == got.keys()
            for key, value in ref.items():
                assert torch.allclose(got[key], value, rtol=1e-4, atol=1e-4 * float(value.abs().max())), \
                    (extra, key, float((got[key] - value).abs().max()), float(value.abs().max()))


def test_every_seeded_block_of_the_statistics_names_the_models_device(tmp_path, monkeypatch):
    """GMM samples (alignment, head Fisher) are drawn on the model's device: the seeded blocks that draw them must
    name that device, or the device's draws come from its unseeded global generator."""
    from app.runner import run
    from tests.conftest import make_npz, tiny_run_args
    from utils import seeding
    calls = []
    real = seeding.seeded_for

    def recording(args, task, purpose, device=None):
        calls.append((purpose, None if device is None else torch.device(device)))
        return real(args, task, purpose, device)
    monkeypatch.setattr(seeding, "seeded_for", recording)
    data = make_npz(str(tmp_path / "d.npz"), n_classes=4, per_class=6)
    run(["--model", "ita", "--alpha_ita", "1", "--num_epochs_pretuning", "1", "--num_epochs_align_pretuning", "1",
         "--num_samples_align_pretuning", "8", "--batch_size_align_pretuning", "4", "--use_ca", "1",
         *tiny_run_args(data, tmp_path), "--device", "cpu", "--plots", "0",
         "--results_file", str(tmp_path / "r.json")])
    purposes = {p for p, _ in calls}
    assert {"pretune", "head_fisher"} <= purposes
    assert [(p, d) for p, d in calls if d != torch.device("cpu")] == []
