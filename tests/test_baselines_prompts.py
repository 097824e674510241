"""Prompt methods: key matching, prefix attention and the un-forked timm ViT forward passes."""
import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from models.prompt_utils.pools import CodaComponents, PromptPool, gram_schmidt_rows
from models.prompt_utils.vit_prompting import cls_features, embed_tokens, prefix_attention, run_blocks


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return VisionTransformer(img_size=8, patch_size=4, embed_dim=16, depth=2, num_heads=2, num_classes=0).eval()


def test_prompt_pool_selects_the_keys_most_similar_to_the_query():
    pool = PromptPool(pool_size=4, length=2, dim=3, top_k=2)
    with torch.no_grad():
        pool.keys.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0]]))
        pool.prompts.copy_(torch.arange(24, dtype=torch.float32).reshape(4, 2, 3))
    query = torch.tensor([[2.0, 0.1, 0.0], [0.0, 0.0, 5.0]])
    prompts, pull = pool(query)
    cos = F.normalize(query, dim=1) @ F.normalize(pool.keys, dim=1).t()
    # query 0: keys 0 (cos~1.0) and 3 (~0.74); query 1: key 2 (1.0), then a tie at 0 -> any
    assert set(pool.select(cos)[0].tolist()) == {0, 3} and pool.select(cos)[1, 0].item() == 2
    assert prompts.shape == (2, 4, 3)
    torch.testing.assert_close(prompts[0], torch.cat([pool.prompts[i] for i in pool.select(cos)[0].tolist()]))
    idx = pool.select(cos)
    assert pull.item() == pytest.approx(cos.gather(1, idx).sum().item() / 2)
    # batchwise: the top_k prompts chosen most often in the batch, for every sample
    many = torch.tensor([[1.0, 0, 0]] * 3 + [[0, 0, 1.0]])
    sim = F.normalize(many, dim=1) @ F.normalize(pool.keys, dim=1).t()
    assert pool.select(sim, batchwise=True).tolist() == [[0, 3]] * 4


def test_unprompted_pass_equals_timm_forward(vit):
    x = torch.randn(3, 3, 8, 8)
    tokens = run_blocks(vit, embed_tokens(vit, x))
    torch.testing.assert_close(tokens, vit.forward_features(x))
    torch.testing.assert_close(cls_features(vit, tokens), vit(x))


def test_prefix_attention_equals_attention_over_concatenated_keys(vit):
    attn = vit.blocks[0].attn
    x, pk, pv = torch.randn(2, 5, 16), torch.randn(2, 3, 16), torch.randn(2, 3, 16)
    out = prefix_attention(attn, x, pk[:, :0], pv[:, :0])
    torch.testing.assert_close(out, attn(x))
    # brute force: softmax(q k^T / sqrt(d)) v per head, keys/values = [prefix; projected tokens]
    qkv = attn.qkv(x).reshape(2, 5, 3, 2, 8)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    k = torch.cat((pk.reshape(2, 3, 2, 8), k), dim=1)
    v = torch.cat((pv.reshape(2, 3, 2, 8), v), dim=1)
    weights = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / 8 ** 0.5, dim=-1)
    expected = attn.proj(torch.einsum("bhqk,bkhd->bqhd", weights, v).reshape(2, 5, 16))
    torch.testing.assert_close(prefix_attention(attn, x, pk, pv), expected, rtol=1e-4, atol=1e-5)


def test_coda_weights_by_hand_and_old_components_frozen():
    torch.manual_seed(0)
    comps = CodaComponents(n_layers=1, pool_size=4, length=2, dim=3, n_tasks=2)
    query = torch.randn(2, 3)
    alpha = comps.weights(0, query, end=4, train_start=2)
    for b in range(2):
        for m in range(4):
            expected = F.cosine_similarity(query[b] * comps.A[0, m], comps.K[0, m], dim=0)
            assert alpha[b, m].item() == pytest.approx(expected.item(), abs=1e-6)
    pk, pv = comps(0, query, end=4, train_start=2)
    prompt = torch.einsum("bm,mld->bld", alpha, comps.P[0])
    torch.testing.assert_close(torch.cat((pk, pv), dim=1), prompt)
    (pk.sum() + pv.sum()).backward()
    for param in (comps.P, comps.K, comps.A):
        assert param.grad[0, :2].abs().sum() == 0 and param.grad[0, 2:].abs().sum() > 0


def test_gram_schmidt_makes_new_components_orthonormal_to_old_ones():
    torch.manual_seed(0)
    old = gram_schmidt_rows(torch.zeros(0, 6), torch.randn(2, 6))
    new = gram_schmidt_rows(old, torch.randn(3, 6))
    basis = torch.cat((old, new))
    torch.testing.assert_close(basis @ basis.t(), torch.eye(5), atol=1e-5, rtol=0)
