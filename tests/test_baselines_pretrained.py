"""SimpleCIL, DualPrompt, TMC, InfLoRA and SEED: their defining mechanisms against hand computations."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from backbone import get_backbone
from benchmarks.compare import merge_flags
from datasets import get_dataset
from models import get_model_class
from models.feature_utils.features import task_features
from models.feature_utils.gaussians import ensemble_log_probs, gaussian_kl, gaussian_log_prob, mean_pairwise_kl
from models.inflora_utils.subspace import SubspaceMemory, designed_down_projection
from models.prompt_utils.vit_prompting import embed_tokens, prefix_attention
from models.simplecil import cosine_logits
from models.tmc import linearized
from tests.conftest import make_npz, tiny_run_args
from app.config import parse_args
from utils.training import train
from tests.conftest import read_file

CNN = ["--backbone", "resnet18", "--num_filters", "4"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_npz(str(tmp_path_factory.mktemp("data") / "d.npz"), n_classes=6, per_class=6)


def build(method, data, tmp_path, *extra, cnn=False, n_tasks=3):
    """(model, dataset) of a tiny run, not trained yet."""
    args = tiny_run_args(data, tmp_path, n_tasks=n_tasks)
    if cnn:
        i = args.index("--backbone")
        del args[i:i + 8]
        args += CNN
    args = parse_args(["--model", method, *merge_flags(args, ["--plots", "0"], list(extra))])
    torch.manual_seed(0)
    dataset = get_dataset(args)
    net = get_backbone(args, dataset.N_CLASSES, dataset.img_size, dataset.IN_CHANS)
    model = get_model_class(method)(net, dataset.get_loss(), args, dataset.get_transform(), dataset=dataset)
    return model, dataset


def all_test_images(dataset):
    xs, ys = zip(*[(b[0], b[1]) for loader in dataset.test_loaders for b in loader])
    return torch.cat(xs), torch.cat(ys)


# ----- simplecil -------------------------------------------------------------------------------------
@pytest.mark.parametrize("cnn, aper", [(False, "0"), (True, "0"), (True, "1")])
def test_simplecil_logits_are_cosines_to_the_class_means_of_frozen_features(data, tmp_path, cnn, aper):
    model, dataset = build("simplecil", data, tmp_path, "--aper_adapt", aper, cnn=cnn)
    theta0 = {k: v.clone() for k, v in model.net.state_dict().items()}
    train(model, dataset, model.args)
    for k, v in model.net.state_dict().items():  # the pre-trained network never changes
        assert torch.equal(v, theta0[k]), k
    model.eval()
    feats, labels = [], []
    for t in range(3):
        f, y = task_features(model.features, dataset, t, model.device)
        feats.append(f)
        labels.append(y)
    feats, labels = torch.cat(feats), torch.cat(labels)
    means = torch.stack([feats[labels == c].mean(0) for c in range(6)])
    x, _ = all_test_images(dataset)
    with torch.no_grad():
        expected = F.normalize(model.features(x), dim=1) @ F.normalize(means, dim=1).t()
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)
    assert model.features(x).shape[1] == model.net.feature_dim * (2 if aper == "1" else 1)
    torch.testing.assert_close(cosine_logits(torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0], [0.0, 0.0]])),
                               torch.tensor([[0.6, 0.0]]))


# ----- dualprompt ------------------------------------------------------------------------------------
def test_dualprompt_prefixes_selection_and_pull_by_hand(data, tmp_path):
    model, dataset = build("dualprompt", data, tmp_path, "--depth", "3", "--g_prompt_layers", "0,1",
                           "--e_prompt_layers", "1,2", "--g_prompt_length", "2", "--e_prompt_length", "3")
    model.eval()
    vit, x = model.vit, torch.randn(4, 3, 8, 8)
    model.current_task = 2                          # two trained tasks at evaluation time
    q = vit(x)
    with torch.no_grad():
        model.e_pool.keys[1] = q[0]                 # sample 0 matches key 1 exactly
    cos = F.normalize(q, dim=1) @ F.normalize(model.e_pool.keys, dim=1).t()
    expected_idx = cos[:, :2].argmax(dim=1)         # keys of untrained tasks are never picked
    idx, pull = model.select(q, train=False)
    assert idx.tolist() == expected_idx.tolist() and idx[0] == 1
    assert pull.item() == pytest.approx(cos.gather(1, expected_idx[:, None]).sum().item() / 4, rel=1e-5)
    idx_train, pull_train = model.select(q, train=True)
    assert idx_train.tolist() == [2] * 4 and pull_train.item() == pytest.approx(cos[:, 2].sum().item() / 4, rel=1e-5)
    # the forward by hand: G (2 key + 2 value tokens) at blocks 0 and 1, then E (3 + 3) at blocks 1 and 2
    with torch.no_grad():
        logits, extra = model.prompted_logits(x, train=False)
        tokens = embed_tokens(vit, x)
        e = model.e_pool.prompts[expected_idx].reshape(4, 2, 2, 3, -1)       # (B, e-layer, k/v, length, D)
        g = model.g_prompt
        for b, block in enumerate(vit.blocks):
            keys, values = [], []
            if b in (0, 1):
                keys.append(g[b, 0].expand(4, -1, -1))
                values.append(g[b, 1].expand(4, -1, -1))
            if b in (1, 2):
                keys.append(e[:, b - 1, 0])
                values.append(e[:, b - 1, 1])
            attn = prefix_attention(block.attn, block.norm1(tokens), torch.cat(keys, 1), torch.cat(values, 1))
            tokens = tokens + attn
            tokens = tokens + block.mlp(block.norm2(tokens))
        expected = model.net.classifier(vit.norm(tokens)[:, 0])
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
    assert extra.item() == pytest.approx(-model.args.pull_constraint_coeff * pull.item(), rel=1e-5)


def test_dualprompt_starts_each_e_prompt_from_the_previous_one(data, tmp_path):
    model, dataset = build("dualprompt", data, tmp_path, "--g_prompt_layers", "0", "--e_prompt_layers", "0")
    model.current_task = 1
    model.begin_task(dataset)
    assert torch.equal(model.e_pool.prompts[1], model.e_pool.prompts[0])
    assert not torch.equal(model.e_pool.keys[1], model.e_pool.keys[0])


# ----- tmc -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["vit_tiny", "efficientnet_lite0"])
def test_tmc_jvp_equals_finite_difference_of_the_network(arch):
    from backbone.vit import vit_tiny
    from timm.models.efficientnet import _gen_efficientnet_lite
    torch.manual_seed(0)
    # float64 convolutions take torch's slow path on the CPU (a full Lite0 forward took 20 s): the CNN case uses the
    # Lite0 architecture (depthwise convs, BatchNorm, ReLU6) at a quarter of the width and a third of the depth
    body = vit_tiny(3, img_size=8, embed_dim=16, depth=1, num_heads=2).body if arch == "vit_tiny" else \
        _gen_efficientnet_lite("efficientnet_lite0", channel_multiplier=0.25, depth_multiplier=0.3, num_classes=0)
    body = body.double().eval()
    with torch.no_grad():  # off timm's zero-initialised BatchNorm scales: no ReLU6 kink exactly at theta0
        for p in body.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 3, 8 if arch == "vit_tiny" else 16, 8 if arch == "vit_tiny" else 16, dtype=torch.float64)
    params = dict(body.named_parameters())
    tangent = {n: torch.randn_like(p) * 0.1 for n, p in params.items()}
    base, direction = linearized(body, x, tangent)
    theta0 = {n: p.detach() for n, p in params.items()}
    eps = 1e-6

    @torch.no_grad()
    def at(sign):  # f(x; theta0 + sign * eps * tangent)
        return functional_call(body, {n: theta0[n] + sign * eps * tangent[n] for n in params}, (x,))
    torch.testing.assert_close(base, body(x))
    fd = (at(1) - at(-1)) / (2 * eps)
    torch.testing.assert_close(direction, fd, rtol=1e-5, atol=1e-7)
    # linear in the tangent: J(a u + b v) = a J u + b J v
    other = {n: torch.randn_like(p) for n, p in params.items()}
    mixed = linearized(body, x, {n: 2 * tangent[n] - 3 * other[n] for n in params})[1]
    torch.testing.assert_close(mixed, 2 * direction - 3 * linearized(body, x, other)[1])


def test_tmc_composition_is_the_average_of_the_components_and_edits_reweight_it(data, tmp_path):
    model, dataset = build("tmc", data, tmp_path, "--lr", "0.01", cnn=True)
    theta0 = {k: v.clone() for k, v in model.net.body.state_dict().items()}
    train(model, dataset, model.args)
    for k, v in model.net.body.state_dict().items():
        assert torch.equal(v, theta0[k]), k  # theta0 is the linearisation point, never trained
    assert model.pool.n_tasks == 3 and all(t["conv1.weight"].abs().sum() > 0 for t in model.pool.tangents)
    model.eval()
    x, _ = all_test_images(dataset)
    with torch.no_grad():
        per_task = [sum(linearized(model.net.body, x, tau)) for tau in model.pool.tangents]
        torch.testing.assert_close(model(x), model.net.classifier(sum(per_task) / 3), rtol=1e-4, atol=1e-5)
        model.eval_task_weights = [0.0, 1.0, 0.0]    # specialisation on task 1: its component alone
        torch.testing.assert_close(model(x), model.net.classifier(per_task[1]), rtol=1e-4, atol=1e-5)
        model.eval_task_weights = [0.5, 0.0, 0.5]    # unlearning task 1
        torch.testing.assert_close(model(x), model.net.classifier((per_task[0] + per_task[2]) / 2),
                                   rtol=1e-4, atol=1e-5)


def test_tmc_checkpoint_is_edited_by_the_edit_command(data, tmp_path, capsys):
    from app.edit import main as edit_main
    from app.runner import run
    args = ["--model", "tmc", *merge_flags(tiny_run_args(data, tmp_path, n_tasks=3),
                                           ["--plots", "0", "--lr", "0.01", "--savecheck", "task"])]
    run(args)
    ckpts = sorted((tmp_path / "ckpt").rglob("*.pt"))
    assert ckpts
    out = tmp_path / "edit.json"
    assert edit_main(["--checkpoint", str(ckpts[-1]), "--drop", "1", "--out", str(out), "--device", "cpu"]) == 0
    import json
    report = json.loads(read_file(out))
    assert report["weights"] == [0.5, 0.0, 0.5] and report["targets"] == [1]
    assert "target class-IL mean" in capsys.readouterr().out


# ----- inflora ---------------------------------------------------------------------------------------
def test_subspace_memory_update_matches_gpm_threshold_by_hand():
    rng = np.random.RandomState(0)
    d = 6
    basis = np.linalg.qr(rng.randn(d, d))[0]
    scales = np.array([10.0, 5.0, 2.0, 1.0, 0.5, 0.1])
    H = basis @ np.diag(scales) @ rng.randn(d, 40) / np.sqrt(40)
    memory = SubspaceMemory(d)
    gram = torch.tensor(H @ H.T)
    added = memory.update(gram, 0.97)
    s2 = np.linalg.svd(H, compute_uv=False) ** 2
    k = int(np.searchsorted(np.cumsum(s2) / s2.sum(), 0.97) + 1)   # smallest k with energy >= 97 %
    assert added == k and memory.rank == k
    U = np.linalg.svd(H)[0][:, :k]
    M = memory.retained_basis().double().numpy()
    np.testing.assert_allclose(M @ M.T, U @ U.T, atol=1e-5)       # the same subspace
    # second task: only the residual outside M counts; its energy criterion by hand
    H2 = rng.randn(d, 30)
    R = H2 - M @ (M.T @ H2)
    r2 = np.linalg.svd(R, compute_uv=False) ** 2
    retained = np.linalg.norm(M.T @ H2) ** 2
    total = np.linalg.norm(H2) ** 2
    k2 = int(np.argmax(retained + np.cumsum(r2) >= 0.9 * total) + 1)
    assert memory.update(torch.tensor(H2 @ H2.T), 0.9) == k2 and memory.rank == k + k2
    assert memory.dual == (k + k2 > d // 2)                          # DualGPM: the smaller of M and its complement
    M2 = memory.retained_basis().double().numpy()
    np.testing.assert_allclose(M2.T @ M2, np.eye(k + k2), atol=1e-5)
    x = torch.tensor(rng.randn(d, 4))
    np.testing.assert_allclose(memory.project_out(x).numpy(), x.numpy() - M2 @ (M2.T @ x.numpy()), atol=1e-5)


def test_designed_down_projection_avoids_the_old_subspace():
    rng = np.random.RandomState(1)
    d, r = 8, 2
    memory = SubspaceMemory(d)
    memory.update(torch.tensor(np.diag([9.0, 4.0, 0, 0, 0, 0, 0, 0])), 0.99)  # old tasks: e1, e2
    H = rng.randn(d, 50)
    A = designed_down_projection(torch.tensor(H @ H.T), memory, r).double().numpy()
    assert A.shape == (r, d)
    np.testing.assert_allclose(A[:, :2], 0, atol=1e-6)                        # orthogonal to the memory
    P = np.eye(d)
    P[0, 0] = P[1, 1] = 0
    U = np.linalg.svd(P @ H)[0][:, :r]
    np.testing.assert_allclose(A.T @ A, U @ U.T, atol=1e-5)                    # top-r of the projected inputs


def test_inflora_branches_are_interference_free_and_compose_by_sum(data, tmp_path):
    model, dataset = build("inflora", data, tmp_path, "--inflora_rank", "2", "--lr", "0.01", "--depth", "2")
    memories_before = []

    def snapshot(_):
        memories_before.append({n: m.retained_basis().clone() for n, m in model.memories.items()})
    train(model, dataset, model.args, on_task_end=snapshot)
    for name, layer in model.layers.items():
        for t in (1, 2):  # A_t is orthogonal to the memory after task t-1
            M = memories_before[t - 1][name]
            assert M.shape[1] > 0
            torch.testing.assert_close(layer.deltas[t].A @ M, torch.zeros(2, M.shape[1]), atol=1e-5, rtol=0)
        for delta in layer.deltas:
            assert delta.B.abs().sum() > 0 and torch.equal(delta.B[:layer.d_out // 3], torch.zeros_like(
                delta.B[:layer.d_out // 3]))                                   # no query branch
    layer = model.layers["blocks.0.attn.qkv"]
    x = torch.randn(3, 5, layer.d_in)
    model.eval()
    with torch.no_grad():
        dense = sum(d.B @ d.A for d in layer.deltas)
        torch.testing.assert_close(layer(x), F.linear(x, layer.base.weight + dense, layer.base.bias))


# ----- seed ------------------------------------------------------------------------------------------
def test_gaussian_log_prob_and_kl_match_torch_distributions():
    torch.manual_seed(0)
    D = 4
    covs = [(lambda a: a @ a.t() + 0.5 * torch.eye(D))(torch.randn(D, D, dtype=torch.float64)) for _ in range(2)]
    means = [torch.randn(D, dtype=torch.float64) for _ in range(2)]
    dists = [torch.distributions.MultivariateNormal(m, c) for m, c in zip(means, covs)]
    x = torch.randn(5, D, dtype=torch.float64)
    torch.testing.assert_close(gaussian_log_prob(x, means[0], torch.linalg.cholesky(covs[0])), dists[0].log_prob(x))
    kl01 = torch.distributions.kl_divergence(dists[0], dists[1])
    torch.testing.assert_close(gaussian_kl(means[0], covs[0], means[1], covs[1]), kl01)
    kl10 = torch.distributions.kl_divergence(dists[1], dists[0])
    assert mean_pairwise_kl(list(zip(means, covs))) == pytest.approx(float(kl01 + kl10) / 2)


def test_mean_pairwise_kl_equals_the_pairwise_brute_force_on_low_rank_class_statistics():
    """The factorise-once form against gaussian_kl pair by pair, on SEED-like statistics: few samples per class
    in a larger dimension (rank-deficient covariances + eps), different scales per dimension."""
    torch.manual_seed(1)
    D, n = 48, 6
    stats = []
    for c in range(n):
        x = torch.randn(9, D) * torch.rand(D) * (c + 1) + c
        stats.append((x.mean(0), torch.cov(x.t()) + 1e-3 * torch.eye(D)))
    pairs = [gaussian_kl(*stats[i], *stats[j]) for i in range(n) for j in range(n) if i != j]
    assert mean_pairwise_kl(stats) == pytest.approx(float(torch.stack(pairs).mean()), rel=1e-10)
    assert mean_pairwise_kl(stats[:1]) == 0.0


def test_seed_ensemble_by_hand():
    ll = torch.tensor([[[0.0, 1.0, -1.0]], [[2.0, 0.0, 0.0]]])   # (experts, samples, classes)
    known = torch.tensor([[True, True, True], [False, True, True]])
    tau = 2.0
    p0 = np.exp(np.array([0.0, 1.0, -1.0]) / tau)
    p0 /= p0.sum()
    p1 = np.exp(np.array([0.0, 0.0]) / tau)
    p1 /= p1.sum()
    expected = np.array([p0[0], (p0[1] + p1[0]) / 2, (p0[2] + p1[1]) / 2])
    np.testing.assert_allclose(ensemble_log_probs(ll, known, tau).exp()[0].numpy(), expected, rtol=1e-6)


def test_seed_selects_the_expert_with_the_least_class_overlap(data, tmp_path, monkeypatch):
    model, dataset = build("seed", data, tmp_path, "--num_experts", "3")
    eye = torch.eye(2)
    spaces = {0: {0: (torch.zeros(2), eye), 1: (torch.tensor([1.0, 0.0]), eye)},        # KL 0.5
              1: {0: (torch.zeros(2), eye), 1: (torch.tensor([3.0, 0.0]), eye)},        # KL 4.5: least overlap
              2: {0: (torch.zeros(2), eye), 1: (torch.zeros(2), 2 * eye)}}
    hand = {e: mean_pairwise_kl(list(s.values())) for e, s in spaces.items()}
    assert hand[0] == pytest.approx(0.5) and hand[1] == pytest.approx(4.5)
    monkeypatch.setattr(model, "task_stats", lambda e, ds: spaces[e])
    model.current_task = 1
    assert model.select_expert(dataset) == 1                       # a free expert is used first
    model.current_task = 3
    assert model.select_expert(dataset) == max(hand, key=hand.get) == 1


def test_seed_run_trains_one_expert_per_task_and_fits_gaussians(data, tmp_path):
    model, dataset = build("seed", data, tmp_path, "--num_experts", "2", "--seed_cov_eps", "0.01")
    train(model, dataset, model.args)
    chosen = model.expert_of_task.tolist()
    assert chosen[:2] == [0, 1] and chosen[2] in (0, 1)
    assert model.known[0].all() and model.known[1].tolist() == [False] * 2 + [True] * 4
    model.eval()
    feats, labels = task_features(lambda x: model.experts[1](x), dataset, 2, model.device)
    c = int(labels[0])
    torch.testing.assert_close(model.means[1, c], feats[labels == c].mean(0), rtol=1e-4, atol=1e-5)


# ----- published configurations ------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["simplecil", "dualprompt", "tmc", "inflora", "seed"])
def test_best_configs_parse_and_name_their_sources(method):
    import os

    import yaml

    from tests.conftest import ROOT
    path = os.path.join(ROOT, "models", "config", f"{method}.yaml")
    sections = yaml.safe_load(read_file(path))
    assert "seq-cifar100-224" in sections
    for dataset, values in sections.items():
        args = parse_args(["--model", method, "--dataset", dataset, "--model_config", "best"])
        for key, value in values.items():
            got = getattr(args, key)
            got = ",".join(map(str, got)) if isinstance(got, list) else int(got) if isinstance(got, bool) else got
            assert str(got) == str(value), (dataset, key, got, value)
    text = read_file(path).split("seq-cifar100-224:\n")[1]
    keyed = []
    for line in text.splitlines():
        if not line.startswith("  "):
            break
        keyed.append(line)
    assert keyed and all("#" in line for line in keyed), "every value of the first section names its source"
