"""Every baseline end to end on a tiny dataset, resume equivalence, clear errors, the comparison runner."""
import json
import os

import pytest

from benchmarks.compare import compare, merge_flags
from models import MODELS
from tests.conftest import EXTRA_FLAGS, make_npz, shared_file, tiny_run_args
from utils.errors import UserError
from app.runner import main, run
from tests.conftest import read_file

# the end-to-end and resume matrix: generated from the model registry, so every future model is covered
METHODS = {MODELS.get(name).NAME: EXTRA_FLAGS.get(MODELS.get(name).NAME, []) for name in MODELS.names()}



def test_every_registered_method_is_in_the_matrix():
    names = {MODELS.get(n).NAME for n in MODELS.names()}
    assert set(METHODS) == names and {"sgd", "joint", "ita", "iel", "second_order"} <= names
    assert set(EXTRA_FLAGS) <= names, "EXTRA_FLAGS names a model that is not registered"


def method_args(method, data, tmp_path, *extra):
    return ["--model", method, *merge_flags(tiny_run_args(data, tmp_path, n_tasks=3), ["--plots", "0"],
                                            METHODS[method], list(extra))]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_npz(str(tmp_path_factory.mktemp("data") / "d.npz"), n_classes=6, per_class=6)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_runs_end_to_end(method, data, tmp_path):
    res = run(method_args(method, data, tmp_path, "--results_file", str(tmp_path / "r.json")))
    assert res["complete"] and [len(r) for r in res["accuracy_matrix_class_il"]] == [1, 2, 3]
    assert 0 <= res["final_class_il"] <= 100 and 0 <= res["final_task_il"] <= 100
    if method == "ranpac":  # closed-form ridge on random features separates the brightness classes
        assert res["final_class_il"] >= 80


@pytest.mark.parametrize("method", sorted(METHODS))
def test_stop_and_resume_equals_uninterrupted_run(method, data, tmp_path):
    base = method_args(method, data, tmp_path)
    full = run([*base, "--results_file", str(tmp_path / "full.json")])
    part = run([*base, "--savecheck", "task", "--stop_after", "1", "--results_file", str(tmp_path / "part.json")])
    assert part["tasks_done"] == 1
    resumed = run([*base, "--savecheck", "task", "--resume", "--results_file", str(tmp_path / "resumed.json")])
    for key in ("accuracy_matrix_class_il", "accuracy_matrix_task_il", "final_class_il", "forgetting"):
        assert resumed[key] == full[key], key


@pytest.mark.parametrize("argv, message", [
    (["--model", "er"], "give --buffer_size N"),
    (["--model", "l2p", "--backbone", "resnet18", "--num_filters", "4"], "use --backbone vit_tiny"),
    (["--model", "coda_prompt", "--pool_size", "2"], "pool_size 2 must be at least the number of tasks 3"),
    (["--model", "l2p", "--top_k", "11"], "--top_k 11 exceeds --pool_size 10"),
    (["--model", "ewc_on", "--gamma", "1.5"], "expected a number in [0, 1]"),
    (["--model", "dualprompt", "--backbone", "resnet18", "--num_filters", "4"], "use --backbone vit_tiny"),
    (["--model", "inflora", "--backbone", "resnet18", "--num_filters", "4"], "inflora adds LoRA branches to a timm"),
    (["--model", "dualprompt", "--e_prompt_layers", "5"], "--e_prompt_layers [5]: the ViT has only 1 blocks"),
    (["--model", "dualprompt", "--e_prompt_layers", "0", "--e_pool_size", "2"], "--e_pool_size 2 must be at least the number of tasks 3"),
])
def test_bad_method_settings_are_one_line_errors(argv, message, data, tmp_path, capsys):
    args = tiny_run_args(data, tmp_path, n_tasks=3)
    if "--backbone" in argv:
        i = args.index("--backbone")
        del args[i:i + 8]  # drop the ViT backbone and its three flags
    assert main(merge_flags(args, ["--plots", "0"], argv)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_merge_flags_lets_later_layers_override():
    assert merge_flags(["--lr", "0.1", "--a", "1"], ["--lr=0.2", "--b"]) == ["--a", "1", "--lr", "0.2", "--b"]


def test_compare_writes_table_and_plot(data, tmp_path):
    out = tmp_path / "cmp"
    shared = tiny_run_args(data, tmp_path, n_tasks=2)
    for flag in ("--backbone", "--embed_dim", "--depth", "--num_heads", "--seed"):
        i = shared.index(flag)
        del shared[i:i + 2]
    paths, failures = compare(["--dataset", "seq-custom", "--models", "er,l2p", "--seeds", "2",
                               "--backbone", "resnet18", "--backbone_args", "--num_filters 4",
                               "--vit_args", "--embed_dim 16 --depth 1 --num_heads 2",
                               "--extra", "er:--buffer_size 6", "--extra", "l2p:--lr 0.01 --pool_size 4 --top_k 1",
                               "--out", str(out), "--", "--plots", "0", *[a for a in shared if a != "--dataset"
                                                          and a != "seq-custom"]])
    assert failures == []
    table = read_file(paths["markdown"])
    for method in ("er", "l2p"):
        assert f"| {method} | 2 | 0, 1 |" in table
    assert os.path.getsize(paths["png"]) > 1000
    er = json.loads(read_file(out / "results" / "er" / "seed1.json"))
    assert er["args"]["buffer_size"] == 6 and er["args"]["backbone"] == "resnet18" and er["args"]["seed"] == 1
    l2p = json.loads(read_file(out / "results" / "l2p" / "seed0.json"))
    assert l2p["args"]["backbone"] == "vit_tiny" and l2p["args"]["lr"] == 0.01
    with pytest.raises(UserError, match="not in --models"):
        compare(["--dataset", "seq-custom", "--models", "sgd", "--extra", "er:--buffer_size 5"])


def test_er_and_derpp_beat_sgd_on_cifar10_mini(tmp_path):
    """Seeds 0-2 measured: sgd 12.0/10.0/10.0, er 20.5/19.4/19.9, derpp 18.0/20.8/20.0 (class-IL %)."""
    data = shared_file("cifar10_mini.npz")
    common = ["--dataset", "seq-custom", "--data_path", data, "--n_tasks", "5", "--backbone", "vit_tiny",
              "--embed_dim", "64", "--depth", "2", "--patch_size", "8", "--lr", "0.03", "--optim_mom", "0.9",
              "--n_epochs", "1", "--batch_size", "16", "--seed", "0", "--non_verbose", "--plots", "0",
              "--base_path", str(tmp_path)]
    replay = ["--buffer_size", "500", "--minibatch_size", "32"]
    sgd = run(["--model", "sgd", *common])["final_class_il"]
    er = run(["--model", "er", *common, *replay])["final_class_il"]
    derpp = run(["--model", "derpp", *common, *replay, "--alpha", "0.1", "--beta", "1.0"])["final_class_il"]
    assert er > sgd + 3.0 and derpp > sgd + 3.0, (sgd, er, derpp)


def test_ranpac_freezes_after_the_first_task_and_fits_the_ridge_head_on_all_tasks(data, tmp_path):
    import torch
    import torch.nn.functional as F

    from app.config import parse_args
    from app.experiment import build_experiment
    from models.feature_utils.features import task_features
    from models.ranpac import RanPAC, random_features, ridge_solution
    from utils.training import train

    experiment = build_experiment(parse_args(method_args("ranpac", data, tmp_path, "--ridge", "0.5")),
                                  torch.device("cpu"))
    args, dataset, model = experiment.args, experiment.dataset, experiment.model
    assert isinstance(model, RanPAC)
    snapshots, observed = [], []
    observe = model.observe
    model.observe = lambda *a, **k: observed.append(model.current_task) or observe(*a, **k)
    train(model, dataset, args, on_task_end=lambda rec: snapshots.append(
        {k: v.clone() for k, v in model.net.state_dict().items()}))
    assert len(snapshots) == 3 and observed and set(observed) == {0}  # train_task: SGD on the first task only
    for key, value in snapshots[0].items():  # no SGD after the first task
        assert torch.equal(value, snapshots[2][key]), key
    H, Y = [], []
    model.net.eval()
    for task in range(3):
        feats, labels = task_features(model.net.features, dataset, task, model.device)
        H.append(random_features(feats, model.projection).double())
        Y.append(F.one_hot(labels, dataset.N_CLASSES).double())
    H, Y = torch.cat(H), torch.cat(Y)
    torch.testing.assert_close(model.head, ridge_solution(H.t() @ H, H.t() @ Y, 0.5).float(), rtol=1e-4, atol=1e-5)


def test_rehearsal_methods_get_a_buffer_unless_given():
    from benchmarks.compare import build_parser, run_argv

    args = build_parser().parse_args(["--dataset", "seq-custom", "--models", "er,der,derpp"])
    for method in ("er", "der", "derpp"):
        argv = run_argv(method, 0, args, [], {}, "r.json")
        assert argv[argv.index("--buffer_size") + 1] == "200", method
    argv = run_argv("der", 0, args, ["--buffer_size", "50"], {}, "r.json")  # the shared flags win
    assert argv.count("--buffer_size") == 1 and argv[argv.index("--buffer_size") + 1] == "50"
    argv = run_argv("der", 0, args, ["--buffer_size", "50"], {"der": ["--buffer_size", "20"]}, "r.json")
    assert argv.count("--buffer_size") == 1 and argv[argv.index("--buffer_size") + 1] == "20"
