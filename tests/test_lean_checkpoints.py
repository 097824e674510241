"""Lean checkpoints: frozen pretrained weights are left out (hash kept), resume restores them, another
backbone is refused, and saving streams to disk without a full in-memory copy."""
import os
import tracemalloc

import pytest
import torch
from torch import nn

from tests.conftest import make_npz, tiny_run_args
from utils import checkpoints
from utils.errors import UserError
from utils.frozen_weights import PretrainedIndex
from app.runner import main, run

FAST = ["--num_epochs_pretuning", "1", "--num_epochs_align_pretuning", "1", "--num_samples_align_pretuning", "8",
        "--batch_size_align_pretuning", "8"]


def test_strip_drops_exactly_the_untouched_pretrained_tensors():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
    index = PretrainedIndex(net)
    with torch.no_grad():
        net[2].weight.add_(1e-3)  # "trained": must be saved in full
    state = {"model": net.state_dict(), "theta0": {"w": net[0].weight.detach().clone()},
             "other": torch.full((5,), 7.0), "zeros": torch.zeros(5), "n": 3}
    lean = index.strip(state)
    omitted = {tuple(p) for p, _ in lean["pretrained"]["omitted"]}
    assert omitted == {("model", "0.weight"), ("model", "0.bias"), ("model", "1.weight"), ("model", "1.bias"),
                       ("model", "1.running_mean"), ("model", "1.running_var"), ("model", "1.num_batches_tracked"),
                       ("model", "2.bias"), ("theta0", "w"), ("zeros",)}  # equal content: the running mean
    assert set(lean["model"]) == {"2.weight"} and "w" not in lean["theta0"]
    assert lean["n"] == 3 and torch.equal(lean["other"], state["other"])
    full = index.fill(lean, "x.pt")
    assert set(full["model"]) == set(state["model"])
    for k, v in state["model"].items():
        assert torch.equal(full["model"][k], v), k
    assert torch.equal(full["theta0"]["w"], state["theta0"]["w"]) and torch.equal(full["zeros"], torch.zeros(5))
    full["theta0"]["w"].zero_()  # a copy, never an alias of the live parameter
    assert net[0].weight.abs().sum() > 0
    other = PretrainedIndex(nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)))
    with pytest.raises(UserError, match="other pretrained backbone weights"):
        other.fill(lean, "x.pt")


def test_saving_streams_without_an_in_memory_copy(tmp_path):
    state = {"w": torch.randn(10_000_000)}  # 40 MB
    path = str(tmp_path / "c.pt")
    tracemalloc.start()
    checkpoints.save_checkpoint(path, state)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4 * 2 ** 20, peak  # the previous implementation held ~5 copies (200 MB) as bytes
    assert torch.equal(checkpoints.load_checkpoint(path)["w"], state["w"])
    assert os.path.getsize(path) < 40_000_000 + 10_000


def test_second_order_checkpoint_leaves_out_the_backbone_and_resumes(tmp_path, capsys):
    data = make_npz(str(tmp_path / "d.npz"), n_classes=4, per_class=6)
    base = ["--model", "second_order", *tiny_run_args(data, tmp_path), *FAST, "--alpha_ita", "1", "--plots", "0"]
    full = run([*base, "--savecheck", "task", "--ckpt_name", "lean", "--results_file", str(tmp_path / "f.json")])
    ckpt = tmp_path / "ckpt" / "lean" / "task_1.pt"
    state = checkpoints.load_checkpoint(str(ckpt))
    weights = state["model_state"]["model"]
    omitted = [p for p, _ in state["model_state"]["pretrained"]["omitted"]]
    assert ["model", "net.body.blocks.0.attn.qkv.base.weight"] in omitted  # the frozen W0 of an adapted layer
    assert ["model", "net.body.patch_embed.proj.weight"] in omitted
    assert not [k for k in weights if k.startswith("net.body.") and ".deltas." not in k]  # whole body frozen
    assert any(".deltas.0." in k for k in weights) and "net.classifier.heads.0.weight" in weights
    assert set(state["model_state"]["fisher_past"]) and len(state["model_state"]["gmms"]) == 2  # task 2 reads them
    # --loadcheck of task 1 continues exactly as the uninterrupted run
    again = run([*base, "--loadcheck", str(ckpt), "--results_file", str(tmp_path / "a.json")])
    assert again["accuracy_matrix_class_il"] == full["accuracy_matrix_class_il"]
    # after the last task nothing reads the Fisher sums or GMMs: left out, and the finished run still loads
    last = tmp_path / "ckpt" / "lean" / "task_2.pt"
    assert not {"fisher_past", "gmms", "task_counts"} & set(checkpoints.load_checkpoint(str(last))["model_state"])
    done = run([*base, "--loadcheck", str(last), "--results_file", str(tmp_path / "l.json")])
    assert done["accuracy_matrix_class_il"] == full["accuracy_matrix_class_il"] and done["complete"]
    # other pretrained weights (the tiny ViT's random init depends on --seed): refused in one line
    other_seed = [a if a != "0" or base[i - 1] != "--seed" else "1" for i, a in enumerate(base)]
    capsys.readouterr()
    code = main([*other_seed, "--loadcheck", str(ckpt), "--results_file", str(tmp_path / "b.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "made on other pretrained backbone weights" in err[0], err
    assert not (tmp_path / "b.json").exists()


def test_an_unseeded_run_keeps_its_random_layers_and_edits(tmp_path, capsys):
    """Without --seed the random initial layers cannot be rebuilt: the checkpoint keeps every tensor, and
    app.edit (which builds a new model) loads it."""
    from app.edit import main as edit_main
    data = make_npz(str(tmp_path / "d.npz"), n_classes=4, per_class=6)
    base = tiny_run_args(data, tmp_path)
    at = base.index("--seed")
    base = base[:at] + base[at + 2:]
    run(["--model", "second_order", *base, *FAST, "--alpha_ita", "1", "--plots", "0", "--savecheck", "last",
         "--ckpt_name", "unseeded", "--results_file", str(tmp_path / "u.json")])
    ckpt = tmp_path / "ckpt" / "unseeded" / "task_2.pt"
    state = checkpoints.load_checkpoint(str(ckpt))
    assert "pretrained" not in state["model_state"] and "net.body.patch_embed.proj.weight" in state["model_state"]["model"]
    capsys.readouterr()
    assert edit_main(["--checkpoint", str(ckpt), "--drop", "1"]) == 0, capsys.readouterr().err


def test_checkpoint_size_benchmark_counts_the_bytes_a_file_holds(tmp_path):
    from benchmarks.checkpoint_size import measure
    row = measure("lora", ("--backbone", "vit_tiny", "--embed_dim", "32", "--depth", "1", "--num_heads", "2"),
                  img_size=32, n_tasks=2)
    path = str(tmp_path / "c.pt")
    lean = row["model"].lean_checkpoint_state()
    checkpoints.save_checkpoint(path, lean)
    assert os.path.getsize(path) == row["lean_bytes_per_task"][-1]
    index = row["model"].pretrained_index
    omitted = [index.tensors[i] for _, i in lean["pretrained"]["omitted"]]
    omitted_bytes = sum(t.numel() * t.element_size() for t in omitted)
    assert omitted_bytes > 0.8 * row["pretrained_bytes"]  # all but the replaced classifier
    saved = row["previous_bytes_per_task"][0] - row["lean_bytes_per_task"][0]  # task 1 of 2: Fisher kept
    assert omitted_bytes < saved < omitted_bytes + 1000 * len(omitted)  # plus each entry's zip and pickle overhead
    # after the last task the Fisher sums and GMMs (read only by later tasks) are left out as well
    assert "fisher_past" not in lean and "gmms" not in lean and "task_counts" not in lean
    model = row["model"]
    fisher_bytes = sum(t.numel() * t.element_size() for t in model.fisher_past.values())
    gmm_bytes = sum(t.numel() * t.element_size() for g in model.gmms.values() for t in g.state().values())
    dropped = row["previous_bytes_per_task"][-1] - row["lean_bytes_per_task"][-1] - saved
    entries = len(model.fisher_past) + 3 * len(model.gmms)
    assert fisher_bytes + gmm_bytes < dropped < fisher_bytes + gmm_bytes + 1000 * entries
    assert row["lean_bytes_per_task"][1] < row["lean_bytes_per_task"][0]
