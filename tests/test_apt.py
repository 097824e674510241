"""APT (A-la-carte Prompt Tuning): structured attention against brute-force references, isolation of the
prompts, the composed ensemble, training that touches only the current prompt, editing and the CNN error."""
import json

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from app.config import parse_args
from backbone import get_backbone
from benchmarks.compare import merge_flags
from datasets import get_dataset
from models import get_model_class
from models.apt import prompt_mask, structured_forward
from models.prompt_utils.vit_prompting import embed_tokens
from tests.conftest import EXTRA_FLAGS, make_npz, tiny_run_args
from utils.training import train
from tests.conftest import read_file

DEPTH, DIM, LENGTH, MEMORY = 2, 16, 2, 3


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    net = VisionTransformer(img_size=8, patch_size=4, embed_dim=DIM, depth=DEPTH, num_heads=2, num_classes=0).eval()
    with torch.no_grad():  # timm initialises the class token ~1e-6: give it weight so the tests can see it
        net.cls_token.normal_()
    return net


def random_prompts(n: int, seed: int = 1) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return ([torch.randn(LENGTH, DIM, generator=gen) for _ in range(n)],
            [torch.randn(DEPTH, MEMORY, DIM, generator=gen) for _ in range(n)])


def brute_force_prompt(vit: VisionTransformer, images: torch.Tensor, tokens: torch.Tensor,
                       memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ViT run on [backbone tokens; prompt tokens; this block's memory tokens] for ONE prompt, attention
    written out per head with an explicit mask (backbone rows: backbone columns only; prompt rows: every
    column); the memory rows' outputs are discarded after each block. Returns normed (backbone, prompt)."""
    x = embed_tokens(vit, images)
    B, N, D = x.shape
    p = tokens.unsqueeze(0).expand(B, -1, -1)
    for i, block in enumerate(vit.blocks):
        seq = torch.cat((x, p, memory[i].unsqueeze(0).expand(B, -1, -1)), dim=1)
        S, H = seq.shape[1], block.attn.num_heads
        qkv = block.attn.qkv(block.norm1(seq)).reshape(B, S, 3, H, D // H)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        allowed = torch.ones(S, S, dtype=torch.bool)
        allowed[:N, N:] = False
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / (D // H) ** 0.5
        weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        attended = block.attn.proj(torch.einsum("bhqk,bkhd->bqhd", weights, v).reshape(B, S, D))
        seq = seq + attended
        seq = seq + block.mlp(block.norm2(seq))
        x, p = seq[:, :N], seq[:, N:N + tokens.shape[0]]
    return vit.norm(x), vit.norm(p)


@pytest.mark.parametrize("n_prompts", [0, 1, 3])
def test_backbone_tokens_equal_the_frozen_vit_with_any_number_of_prompts(vit, n_prompts):
    images = torch.randn(3, 3, 8, 8)
    tokens, memory = random_prompts(n_prompts)
    backbone, outs = structured_forward(vit, images, tokens, memory)
    torch.testing.assert_close(backbone, vit.forward_features(images), rtol=1e-6, atol=1e-6)
    assert len(outs) == n_prompts and all(o.shape == (3, LENGTH, DIM) for o in outs)


def test_structured_attention_equals_a_brute_force_forward_of_each_prompt_alone(vit):
    images = torch.randn(3, 3, 8, 8)
    tokens, memory = random_prompts(3)
    _, outs = structured_forward(vit, images, tokens, memory)
    for i in range(3):
        backbone, alone = brute_force_prompt(vit, images, tokens[i], memory[i])
        torch.testing.assert_close(outs[i], alone, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(backbone, vit.forward_features(images), rtol=1e-5, atol=1e-5)
    # the memory tokens matter (so the reference above checks them): other memory, other output (a constant
    # shift would not do: norm1 removes it)
    _, changed = structured_forward(vit, images, tokens[:1], [memory[0].flip(-1)])
    assert (changed[0] - outs[0]).abs().max() > 1e-3  # 100x the tolerance of the comparison above


def test_prompt_output_does_not_depend_on_the_other_prompts(vit):
    images = torch.randn(2, 3, 8, 8)
    tokens, memory = random_prompts(3)
    _, alone = structured_forward(vit, images, tokens[:1], memory[:1])
    _, together = structured_forward(vit, images, tokens, memory)
    perturbed_tokens = [tokens[0], tokens[1] * 50 + 3, tokens[2]]
    perturbed_memory = [memory[0], memory[1], memory[2] * -20]
    _, perturbed = structured_forward(vit, images, perturbed_tokens, perturbed_memory)
    for other in (together, perturbed):
        torch.testing.assert_close(other[0], alone[0], rtol=1e-6, atol=1e-6)
    assert (perturbed[1] - together[1]).abs().max() > 1e-2 and (perturbed[2] - together[2]).abs().max() > 1e-2


def test_mask_allows_backbone_own_tokens_and_own_memory_only():
    mask = prompt_mask(n_backbone=2, n_prompts=2, length=1, memory=2, device=torch.device("cpu"))
    # columns: b b | p0 p1 | m0 m0 m1 m1
    assert mask.tolist() == [[True, True, True, False, True, True, False, False],
                             [True, True, False, True, False, False, True, True]]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_npz(str(tmp_path_factory.mktemp("data") / "d.npz"), n_classes=6, per_class=6)


def build(data, tmp_path, *extra):
    args = parse_args(["--model", "apt", *merge_flags(tiny_run_args(data, tmp_path, n_tasks=3), ["--plots", "0"],
                                                      EXTRA_FLAGS["apt"], list(extra))])
    torch.manual_seed(0)
    dataset = get_dataset(args)
    net = get_backbone(args, dataset.N_CLASSES, dataset.img_size, dataset.IN_CHANS)
    model = get_model_class("apt")(net, dataset.get_loss(), args, dataset.get_transform(), dataset=dataset)
    return model, dataset


def test_composition_is_the_documented_ensemble_and_dropping_removes_a_task(data, tmp_path):
    model, _ = build(data, tmp_path)
    model.eval()
    with torch.no_grad():
        for p in model.pool.parameters():
            p.add_(torch.randn_like(p))
    model.pool.n_tasks = 3
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        theta0 = model.vit(x)
        feats = [model.vit.fc_norm(brute_force_prompt(model.vit, x, model.pool.tokens[t], model.pool.memory[t])[1]
                                   .mean(dim=1)) for t in range(3)]
        log_p = [F.log_softmax(model.pool.heads[t](feats[t]), dim=1) for t in range(3)]

        def expected(weights, per_task):
            out = torch.full((5, 6), float("-inf"))
            for t, w in enumerate(weights):
                if w > 0:
                    out[:, 2 * t:2 * t + 2] = torch.log(torch.tensor(w)) + per_task[t]
            return out

        torch.testing.assert_close(model(x), expected([1 / 3] * 3, log_p), rtol=1e-4, atol=1e-5)
        # the ensemble average of the prompts' zero-padded predictive distributions, exactly
        mixture = torch.cat([lp.exp() / 3 for lp in log_p], dim=1)
        torch.testing.assert_close(model(x).exp(), mixture, rtol=1e-4, atol=1e-6)
        model.eval_task_weights = [0.0, 1.0, 0.0]  # specialisation on task 1
        torch.testing.assert_close(model(x), expected([0, 1, 0], log_p), rtol=1e-4, atol=1e-5)
        model.eval_task_weights = [0.5, 0.0, 0.5]  # unlearning task 1: its classes can no longer be predicted
        out = model(x)
        torch.testing.assert_close(out, expected([0.5, 0, 0.5], log_p), rtol=1e-4, atol=1e-5)
        assert not (out.argmax(1) // 2 == 1).any()
        model.eval_task_weights = [0.0, 0.0, 0.0]  # theta0 reference: every head on the frozen class token
        theta0_log_p = [F.log_softmax(model.pool.heads[t](theta0), dim=1) for t in range(3)]
        torch.testing.assert_close(model(x), expected([1 / 3] * 3, theta0_log_p), rtol=1e-4, atol=1e-5)
        model.eval_task_weights = None
        model.pool.n_tasks = 2  # after two tasks: the third task's classes are not composed
        assert torch.isinf(model(x)[:, 4:]).all() and torch.isfinite(model(x)[:, :4]).all()
        model.eval_task_weights = [1.0]
        with pytest.raises(ValueError, match="1 weights for 2 prompts"):
            model.compose_eval()


def test_training_touches_only_the_current_prompt_and_head(data, tmp_path):
    model, dataset = build(data, tmp_path)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    snapshots = []
    end_task = model.end_task

    def recording_end_task(ds):
        end_task(ds)
        snapshots.append({k: v.clone() for k, v in model.pool.state_dict().items()})
    model.end_task = recording_end_task
    train(model, dataset, model.args)
    final = model.state_dict()
    for key, value in initial.items():
        if not key.startswith("pool."):
            assert torch.equal(final[key], value), key  # the ViT and its unused classifier never change
    assert len(snapshots) == 3 and model.pool.n_tasks == 3
    for t, snap in enumerate(snapshots):
        for key, value in snap.items():
            task = int(key.split(".")[1])
            if task > t:  # not trained yet
                assert torch.equal(value, initial[f"pool.{key}"]), (t, key)
            elif task < t:  # trained before: frozen since
                assert torch.equal(value, snapshots[task][key]), (t, key)
            else:
                assert not torch.equal(value, initial[f"pool.{key}"]), (t, key)


def test_edit_command_drops_a_prompt_and_its_classes(data, tmp_path):
    from app.edit import main as edit_main
    from app.runner import run
    run(["--model", "apt", *merge_flags(tiny_run_args(data, tmp_path, n_tasks=3),
                                        ["--plots", "0", "--savecheck", "task"], EXTRA_FLAGS["apt"])])
    ckpts = sorted((tmp_path / "ckpt").rglob("*.pt"))
    assert ckpts
    out = tmp_path / "edit.json"
    assert edit_main(["--checkpoint", str(ckpts[-1]), "--drop", "1", "--out", str(out), "--device", "cpu"]) == 0
    report = json.loads(read_file(out))
    assert report["weights"] == [0.5, 0.0, 0.5] and report["targets"] == [1]
    assert report["edited_class_il"][1] == 0.0  # exact unlearning: task 1's classes are gone with its prompt
    # the editing benchmark's protocol on the same checkpoint: a kept-alone prompt predicts only its classes
    from app.edit import load_model
    from benchmarks.editing import run_protocol
    _, dataset, model, _ = load_model(str(ckpts[-1]), "cpu")
    records = {r["edit"]: r for r in run_protocol(model, dataset, raw_weights=False)}
    assert records["keep all"]["per_task_after"] == records["keep all"]["per_task_before"]
    for t in range(3):
        assert records[f"keep {t}"]["control_after"] == 0.0 and records[f"drop {t}"]["target_after"] == 0.0
        assert records[f"keep {t}"]["per_task_after"][t] >= records["keep all"]["per_task_before"][t]
    assert records["theta0 (all dropped)"]["target_after"] is not None


def test_cnn_backbone_is_a_one_line_error(data, tmp_path, capsys):
    from app.runner import main
    args = tiny_run_args(data, tmp_path, n_tasks=3)
    i = args.index("--backbone")
    del args[i:i + 8]
    assert main(["--model", "apt", *merge_flags(args, ["--backbone", "resnet18", "--num_filters", "4"])]) == 2
    err = capsys.readouterr().err.strip()
    assert "apt prompts a timm VisionTransformer" in err and len(err.splitlines()) == 1
