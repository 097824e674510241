"""The vmapped class backward of the exact Fisher (``class_batch`` > 1) against the per-class loop and the
brute-force per-sample, per-class reference."""
import pytest
import torch

from models.second_order_utils import fisher as fisher_mod
from models.second_order_utils.fisher import auto_class_batch, network_fisher
from models.second_order_utils.modules import ModulePool, inject_adapters
from tests.test_second_order_math import brute_force_fisher, randomize, tiny_cnn, tiny_vit


def adapted(make, style="lora"):
    net = make()
    layers = inject_adapters(net.body, style, rank=2)
    pool = ModulePool(layers)
    randomize(pool, 1)
    pool.use_base()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, layers


def rel_err(a, b):
    return max(float((a[k] - b[k]).norm() / b[k].norm()) for k in b)


@pytest.mark.parametrize("make", [tiny_vit, tiny_cnn])
@pytest.mark.parametrize("style", ["lora", "full"])
def test_batched_fisher_equals_the_loop_and_the_brute_force(make, style):
    net, layers = adapted(make, style)
    torch.manual_seed(1)
    x = torch.randn(7, 3, 8, 8)
    loop, n = network_fisher(net, layers, [x[:4], x[4:]])
    n_classes = net(x).shape[1]
    assert n_classes == 5
    for class_batch in (n_classes, 3):  # all 4 directions in one backward; chunks of 3 (2 passes, one of 1)
        batched, m = network_fisher(net, layers, [x[:4], x[4:]], class_batch=class_batch)
        assert m == n == 7
        assert rel_err(batched, loop) <= 1e-5, class_batch
    ref = brute_force_fisher(net, layers, x)
    assert rel_err(batched, ref) <= 1e-4


@pytest.mark.parametrize("kwargs", [{"mc_classes": 2, "mc_group": 3}, {"sampled_labels": 3}])
def test_batched_approximations_equal_the_loop(kwargs):
    net, layers = adapted(tiny_vit)
    x = torch.randn(6, 3, 8, 8)
    out = []
    for class_batch in (1, 4):
        gen = torch.Generator().manual_seed(0)
        out.append(network_fisher(net, layers, [x], generator=gen, class_batch=class_batch, **kwargs)[0])
    assert rel_err(out[1], out[0]) <= 1e-5


def test_one_vmapped_backward_per_chunk(monkeypatch):
    net, layers = adapted(tiny_vit)
    calls = []
    original = torch.autograd.grad

    def counting(*args, **kwargs):
        calls.append(kwargs.get("is_grads_batched", False))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting)
    network_fisher(net, layers, [torch.randn(3, 3, 8, 8), torch.randn(2, 3, 8, 8)], class_batch=2)
    assert calls == [True] * 4  # 5 classes: 4 backward passes (the exact factor) in chunks of 2, 2, per batch
    calls.clear()
    network_fisher(net, layers, [torch.randn(3, 3, 8, 8)], class_batch=3)
    assert calls == [True, True]  # chunks of 3 and 1
    calls.clear()
    network_fisher(net, layers, [torch.randn(3, 3, 8, 8)], class_batch=1)
    assert calls == [False] * 4  # the per-direction loop


def test_cuda_out_of_memory_halves_the_class_chunk(monkeypatch):
    net, layers = adapted(tiny_cnn)
    x = torch.randn(5, 3, 8, 8)
    loop, _ = network_fisher(net, layers, [x[:3], x[3:]])
    sizes = []
    original = torch.autograd.grad

    def limited(outputs, inputs, grad_outputs=None, **kwargs):
        if kwargs.get("is_grads_batched"):
            sizes.append(grad_outputs.shape[0])
            if grad_outputs.shape[0] > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(outputs, inputs, grad_outputs=grad_outputs, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", limited)
    batched, _ = network_fisher(net, layers, [x[:3], x[3:]], class_batch=5)
    assert sizes == [4, 2, 2, 2, 2]  # all 4 directions fail -> 2 fits and is kept for the next batch
    assert rel_err(batched, loop) <= 1e-5


def test_an_op_vmap_cannot_batch_falls_back_to_one_class_at_a_time(monkeypatch):
    net, layers = adapted(tiny_vit)
    x = torch.randn(5, 3, 8, 8)
    loop, _ = network_fisher(net, layers, [x[:3], x[3:]])
    batched_calls = []
    original = torch.autograd.grad

    def no_batching_rule(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            batched_calls.append(1)
            raise RuntimeError("Batching rule not implemented for aten::some_attention_backward")
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", no_batching_rule)
    with pytest.warns(UserWarning, match="one by one"):
        fallback, _ = network_fisher(net, layers, [x[:3], x[3:]], class_batch=5)
    assert len(batched_calls) == 1  # tried once; the second batch goes straight to the per-class loop
    assert rel_err(fallback, loop) <= 1e-5


def test_auto_class_batch_is_the_loop_on_a_cpu_and_fills_rows_on_cuda():
    assert auto_class_batch(torch.device("cpu"), 8) == 1
    assert auto_class_batch(torch.device("cuda"), 8) == fisher_mod.CLASS_BATCH_ROWS // 8
    assert auto_class_batch(torch.device("cuda"), 4 * fisher_mod.CLASS_BATCH_ROWS) == 1


def test_fisher_class_batch_flag_reaches_the_models_fisher(tmp_path):
    from tests.test_second_order_model import argv_for, build
    fishers = {}
    for class_batch in ("1", "3"):
        args, dataset, model = build(argv_for(tmp_path, "--alpha_ita", "1", "--fisher_class_batch", class_batch,
                                              n_classes=6, n_tasks=1))
        dataset.get_data_loaders()
        model.meta_begin_task(dataset)
        fishers[class_batch] = model.stats.fisher_current
    assert fishers["1"] and rel_err(fishers["3"], fishers["1"]) <= 1e-5
