"""The exact diagonal (true) Fisher at theta0, with per-sample gradients from hooks.

F[W] = sum_x sum_c p_c(x) (d log p_c(x) / dW)^2, element-wise, for the dense weight W of every
adapted layer. One forward per batch; C - 1 backward passes for C seen classes (a factor of the logits'
Fisher, ``fisher_exact.py``), or one per class of the top-k of ``fisher_mc_classes``; per-sample gradients
are formed from the layers' output gradients (sum over tokens / pixels of g_out (x) x_in), squared and
accumulated. The result is
independent of the batch size, so large batches cut the cost without changing the values.

The class backward passes run one by one (``class_batch=1``: tensor hooks on the layers' outputs) or
``class_batch`` at a time in one vmapped backward (``torch.autograd.grad(..., is_grads_batched=True)`` to the
layers' outputs; equal to the loop up to fp32 rounding). A class-token ViT's last block runs for the class token
alone (``fisher_vit.py``: the other rows' gradients are zero).
"""
from __future__ import annotations

import contextlib
import warnings
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Optional

import torch
import torch.nn.functional as F

from models.second_order_utils import fisher_fused
from models.second_order_utils.fisher_ops import ReusedBackward
from models.second_order_utils.fisher_scores import class_scores, cpu_chunks, regroup
from models.second_order_utils.fisher_vit import ClsOnlyLastBlock
from models.second_order_utils.flags import FISHER_PRECISIONS
from models.second_order_utils.modules import AdaptedLayer
from utils import accelerator, onednn_products
from utils.malloc_policy import collector_paused
from utils.split_precision import Bf16x3

CHUNK_ELEMENTS = 1 << 24  # per-sample gradient chunk (B_chunk * d_out * d_in floats)


@contextmanager
def fisher_precision(precision: str, device: torch.device, onednn: bool = False) -> Iterator[None]:
    """The GEMM precision of the Fisher pass: fp32 (TF32 off even under -O 1), tf32 (TF32 on; equal to fp32 on a
    CPU), bf16 (autocast of the forward, so the backward's GEMMs run in bf16) or bf16x3 (every matrix product as
    three bf16 products with fp32 sums, ``utils/split_precision.py``; TF32 off for the rest). Squares are always
    summed in fp32. With ``onednn``, fp32 and tf32 products on a CPU run through oneDNN where it is available
    (``utils/onednn_products.py``: the same fp32 arithmetic, faster than the BLAS on some CPUs)."""
    if precision not in FISHER_PRECISIONS:
        raise ValueError(f"unknown Fisher precision {precision!r}; choose from {', '.join(FISHER_PRECISIONS)}")
    saved = accelerator.tf32()
    reduced = precision in ("tf32", "bf16")
    accelerator.set_tf32(reduced, reduced)
    try:
        if precision == "bf16":
            with torch.autocast(device_type=accelerator.autocast_type(device), dtype=torch.bfloat16):
                yield
        elif precision == "bf16x3":
            with torch.autocast(device_type=device.type, enabled=False), Bf16x3():
                yield
        else:
            products = onednn_products.products_on(device) if onednn else None
            with torch.autocast(device_type=device.type, enabled=False), \
                    (products if products is not None else contextlib.nullcontext()):
                yield  # never under the training autocast
    finally:
        accelerator.set_tf32(*saved)


SQUARE_SUM_FORMS = ("inplace", "norm", "einsum", "fused", "onednn")
# per device type; chosen by benchmarks/square_sum.py on the CPU; on accelerators the one-read "norm" form by its
# bytes (8 per element with the product's write, against 16), re-checked by benchmarks/gpu_check.py --full; "fused"
# (fisher_fused.py: product and square-sum in one Triton kernel, no products in memory) wherever that kernel runs;
# "onednn" (onednn_products.square_sums: per sample one oneDNN product squared into the sum) on a CPU with oneDNN
SQUARE_SUM_FORM = {"cpu": "inplace"}
ACCELERATOR_SQUARE_SUM_FORM = "norm"


def square_sum_form(device: torch.device) -> str:
    """The square-and-sum form used on ``device``: ``fused`` where the Triton kernel runs (or is forced into its CPU
    interpreter, ``fisher_fused.INTERPRET``), ``onednn`` for the fp32 Fisher on a CPU where oneDNN is available,
    else the form of the materialised products."""
    if fisher_fused.INTERPRET or accelerator.fused_kernels_available(device):
        return "fused"
    if device.type == "cpu" and onednn_products.available():
        return "onednn"
    return SQUARE_SUM_FORM.get(device.type, ACCELERATOR_SQUARE_SUM_FORM)


def square_sum(per_sample: torch.Tensor, form: Optional[str] = None) -> torch.Tensor:
    """sum_b per_sample[b]^2 in fp32. fp32 ``inplace``: squared in place (the argument is consumed), then summed
    over the contiguous leading dimension (two elementwise passes, no copy); ``norm``: the 2-norm over the leading
    dimension, squared (one read pass; within 2 ulp of the plain sum); ``einsum``: the batched dot
    ``boi,boi->oi`` (a bmm of O*I (1 x B)(B x 1) products). bf16: a norm accumulating in fp32 (no upcast copy)."""
    if per_sample.dtype != torch.float32:
        return torch.linalg.vector_norm(per_sample, dim=0, dtype=torch.float32).square()
    form = form if form not in (None, "fused", "onednn") else SQUARE_SUM_FORM.get(per_sample.device.type,
                                                                         ACCELERATOR_SQUARE_SUM_FORM)
    if form == "einsum":
        return torch.einsum("boi,boi->oi", per_sample, per_sample)
    if form == "norm":
        return torch.linalg.vector_norm(per_sample, dim=0).square()
    return per_sample.square_().sum(0)


def per_sample_sq_grads(inputs: torch.Tensor, grad_out: torch.Tensor, is_conv: bool,
                        stride: tuple[int, int] = (1, 1), dtype: torch.dtype = torch.float32,
                        precision: Optional[str] = None, kept: Optional[dict] = None) -> torch.Tensor:
    """sum_b (dL_b/dW)^2 for a linear map W applied to ``inputs`` (per sample b); the per-sample products in
    ``dtype`` (fp32 or bf16), their squares summed in fp32. Token inputs under the ``fused`` form: one Triton kernel
    at the kernel precision of the Fisher ``precision`` (``fisher_fused.kernel_precision``). ``kept``: a dict per
    forward of the layer, where the ``onednn`` form keeps its transposed inputs for the next class backward."""
    if is_conv:
        x = inputs[:, :, ::stride[0], ::stride[1]].flatten(2)  # (B, I, P)
        g = grad_out.flatten(2)  # (B, O, P)
        eq = "bop,bip->boi"
    else:
        x = inputs.reshape(inputs.shape[0], -1, inputs.shape[-1])  # (B, T, I)
        g = grad_out.reshape(grad_out.shape[0], -1, grad_out.shape[-1])  # (B, T, O)
        eq = "bto,bti->boi"
    n_out, n_in = (g.shape[1], x.shape[1]) if is_conv else (g.shape[-1], x.shape[-1])
    positions = x.shape[2] if is_conv else x.shape[1]
    if positions <= PAIRWISE_MAX_POSITIONS:
        return pairwise_sq_grads(g.float(), x.float(), is_conv)
    form = square_sum_form(x.device)
    if not is_conv and form == "fused":
        return fisher_fused.fused_sq_grads(g, x, fisher_fused.kernel_precision(precision, dtype),
                                           interpret=fisher_fused.INTERPRET)
    if not is_conv and form == "onednn" and dtype == torch.float32 and onednn_products.active():
        kept = {} if kept is None else kept
        if "x_t" not in kept:
            kept["x_t"] = onednn_products.transposed_tokens(x.float())
        return onednn_products.square_sums(g.float(), x.float(), kept["x_t"])  # the fp32 products through oneDNN
    step = max(1, CHUNK_ELEMENTS // max(1, n_out * n_in))
    total = torch.zeros(n_out, n_in, dtype=torch.float32, device=x.device)
    for i in range(0, x.shape[0], step):
        total += square_sum(torch.einsum(eq, g[i:i + step].to(dtype), x[i:i + step].to(dtype)))
    return total


PAIRWISE_MAX_POSITIONS = 4  # up to this many pixels/tokens, one matrix product beats per-sample gradients


def pairwise_sq_grads(g: torch.Tensor, x: torch.Tensor, is_conv: bool) -> torch.Tensor:
    """sum_b (sum_p g_bp x_bp^T)^2 = sum_{b,p,q} (g_bp * g_bq)(x_bp * x_bq)^T as ONE matrix product
    (with P = 1: (g^2)^T x^2), never materialising the (B, O, I) per-sample gradients."""
    if is_conv:  # (B, O, P), (B, I, P) -> (B, P, O), (B, P, I)
        g, x = g.transpose(1, 2), x.transpose(1, 2)
    gg = (g[:, :, None, :] * g[:, None, :, :]).reshape(-1, g.shape[-1])  # (B P P, O)
    xx = (x[:, :, None, :] * x[:, None, :, :]).reshape(-1, x.shape[-1])  # (B P P, I)
    return gg.t() @ xx


def class_batched_sq_grads(inputs: torch.Tensor, grad_out: torch.Tensor, is_conv: bool,
                           stride: tuple[int, int] = (1, 1), dtype: torch.dtype = torch.float32,
                           precision: Optional[str] = None) -> torch.Tensor:
    """sum_k sum_b (dL_kb/dW)^2 for ``grad_out`` holding k classes' output gradients (k, *output shape): the
    classes are folded into the output dimension, so a group of them is one batched product per sample."""
    k = grad_out.shape[0]
    n_out = grad_out.shape[2] if is_conv else grad_out.shape[-1]
    n_in = inputs.shape[1] if is_conv else inputs.shape[-1]
    group = max(1, CHUNK_ELEMENTS // max(1, n_out * n_in))
    total: Optional[torch.Tensor] = None
    for start in range(0, k, group):
        g = grad_out[start:start + group]
        kk = g.shape[0]
        if is_conv:  # (kk, B, O, H, W) -> (B, kk*O, H, W)
            folded = g.transpose(0, 1).reshape(g.shape[1], kk * n_out, *g.shape[3:])
        else:  # (kk, B, ..., O) -> (B, ..., kk*O)
            folded = g.movedim(0, -2).reshape(*g.shape[1:-1], kk * n_out)
        part = per_sample_sq_grads(inputs, folded, is_conv, stride, dtype, precision).view(kk, n_out, n_in).sum(0)
        total = part if total is None else total + part
    assert total is not None
    return total


class FisherHooks:
    """Context manager: while active, every backward through an adapted layer adds its per-sample
    squared weight gradients to ``self.sums[name]`` (``batched=False``); with ``batched=True`` the layers'
    inputs and outputs are kept in ``self.captured`` instead, for :meth:`backward_batched`.

    The input of the first adapted layer reached by the forward (whose input does not require grad)
    is made a leaf: nothing upstream is differentiated; the class backward passes stop at that layer's output
    (``self.stops``), so not even its input gradient is formed.
    """

    def __init__(self, layers: dict[str, AdaptedLayer], dtype: torch.dtype = torch.float32, batched: bool = False,
                 precision: Optional[str] = None):
        self.layers, self.dtype, self.batched, self.precision = layers, dtype, batched, precision
        self.sums = {n: torch.zeros(l.d_out, l.d_in, device=l.base.weight.device) for n, l in layers.items()}
        self.leaves: list[torch.Tensor] = []
        self.stops: list[torch.Tensor] = []  # outputs of the layers fed by a leaf: where class backwards stop
        self.captured: list[tuple[str, AdaptedLayer, torch.Tensor, torch.Tensor]] = []  # name, layer, input, output
        self._handles: list = []

    def clear(self) -> None:
        """Forget the last forward's leaves and captured layers (call before each forward)."""
        self.leaves.clear()
        self.stops.clear()
        self.captured.clear()

    def backward_batched(self, scores: list[torch.Tensor], chunk: int) -> int:
        """The class backward passes of ``scores`` (0-d tensors of the last forward), ``chunk`` at a time in one
        vmapped backward to the captured layers' outputs; their per-sample squares added to ``self.sums``.
        On a CUDA out-of-memory error the chunk is halved and retried; an op without a vmap rule (a RuntimeError)
        sends the remaining classes one by one. Returns the chunk that worked (1 after such an error)."""
        outputs = [out for _, _, _, out in self.captured]
        if not outputs or not scores:
            return chunk
        stacked = torch.stack(scores)
        start, n = 0, len(scores)
        while start < n:
            k = min(chunk, n - start)
            try:
                if chunk == 1:  # one class: a plain backward, its gradients given a class dimension of 1
                    grads = [None if g is None else g.unsqueeze(0) for g in torch.autograd.grad(
                        scores[start], outputs, retain_graph=True, allow_unused=True)]
                else:
                    select = torch.zeros(k, n, dtype=stacked.dtype, device=stacked.device)
                    select[:, start:start + k].fill_diagonal_(1.0)  # row j picks score start + j
                    grads = torch.autograd.grad(stacked, outputs, grad_outputs=select, is_grads_batched=True,
                                                retain_graph=True, allow_unused=True)
            except accelerator.OutOfMemoryError:
                if chunk == 1:
                    raise
                chunk = max(1, chunk // 2)
                continue
            except RuntimeError as error:  # e.g. an attention kernel whose backward vmap cannot batch
                if chunk == 1:
                    raise
                warnings.warn(f"vmapped Fisher backward failed ({str(error).splitlines()[0]}); "
                              f"backpropagating the classes one by one")
                chunk = 1
                continue
            for (name, layer, x, _), g in zip(self.captured, grads):
                if g is not None:
                    stride = layer.base.stride if layer.is_conv else (1, 1)
                    self.sums[name] += class_batched_sq_grads(x, g.detach(), layer.is_conv, stride, self.dtype,
                                                              self.precision)
            start += k
        return chunk

    def __enter__(self) -> "FisherHooks":
        for name, layer in self.layers.items():
            self._handles.append(layer.register_forward_pre_hook(self._make_leaf))
            self._handles.append(layer.register_forward_hook(self._make_hook(name, layer)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _make_leaf(self, module, args):
        x = args[0]
        if x.requires_grad or not torch.is_grad_enabled():
            return None
        leaf = x.detach().requires_grad_(True)
        self.leaves.append(leaf)
        return (leaf, *args[1:])

    def _make_hook(self, name: str, layer: AdaptedLayer) -> Callable:
        def forward_hook(module, args, output):
            if not output.requires_grad:
                return
            if any(args[0] is leaf for leaf in self.leaves):
                self.stops.append(output)
            x = args[0].detach()
            if self.batched:
                self.captured.append((name, layer, x, output))
                return
            kept: dict = {}  # what the class backwards through this forward share (per_sample_sq_grads)

            def grad_hook(grad: torch.Tensor) -> None:
                stride = layer.base.stride if layer.is_conv else (1, 1)
                self.sums[name] += per_sample_sq_grads(x, grad.detach(), layer.is_conv, stride, self.dtype,
                                                        self.precision, kept)
            output.register_hook(grad_hook)
        return forward_hook


ONEDNN_MIN_WEIGHTS = 1 << 16  # a 256 x 256 layer: below, the dispatch mode's Python cost per op exceeds its gain


def routes_products(layers: dict[str, AdaptedLayer]) -> bool:
    """Whether the Fisher pass sends its fp32 CPU products to oneDNN (``fisher_precision(onednn=True)``): for token
    layers (a ViT's; convolutions are left to torch, not measured) whose largest weight has ``ONEDNN_MIN_WEIGHTS``
    elements or more (benchmarks/cpu_products.py; docs/speed.md)."""
    return bool(layers) and not any(l.is_conv for l in layers.values()) \
        and max(l.d_in * l.d_out for l in layers.values()) >= ONEDNN_MIN_WEIGHTS


def network_fisher(forward: Callable[[torch.Tensor], torch.Tensor], layers: dict[str, AdaptedLayer],
                   batches: Iterable[torch.Tensor], mc_classes: Optional[int] = None,
                   sampled_labels: Optional[int] = None, generator: Optional[torch.Generator] = None,
                   precision: str = "fp32", mc_group: Optional[int] = None, class_batch: Optional[int] = 1,
                   ) -> tuple[dict[str, torch.Tensor], int]:
    """Fisher sums of every adapted layer's weight over ``batches`` and the number of samples.

    ``forward(x)`` returns the logits over the classes the Fisher is taken on (already sliced).
    Exact (default): C - 1 backward passes of :func:`fisher_exact.exact_scores` (equal to one backward per class c
    of sum_b sqrt(p_c(x_b)) log p_c(x_b)).
    ``mc_classes=k``: for each micro-batch of ``mc_group`` consecutive samples of the pass (the paper code's
    ``--batch_size``; default: each incoming batch), only the k classes of :func:`select_classes` (truncated
    sum, biased); the result does not depend on how ``batches`` is cut.
    ``sampled_labels=k`` (the *sampled-label* estimator, unbiased): k backwards per batch, each of
    sum_b log p_{y_b}(x_b) / sqrt(k) with y_b drawn from the model's prediction p(x_b).
    ``class_batch``: backward passes per vmapped backward (1: one by one; None: :func:`auto_class_batch`); the
    values equal the loop's up to fp32 rounding.
    """
    n = 0
    if mc_classes is not None and mc_group and not sampled_labels:
        batches = regroup(batches, mc_group)
    elif mc_classes is None and not sampled_labels:
        batches = cpu_chunks(batches)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    fitted = None  # the class chunk that fitted after a CUDA out-of-memory error
    onednn = routes_products(layers)
    with FisherHooks(layers, dtype, precision=precision) as hooks:
        for x in batches:
            with collector_paused():  # the batch's thousands of short-lived objects; its loading outside
                hooks.clear()
                chunk = class_batch if class_batch is not None else auto_class_batch(x.device, x.shape[0])
                chunk = chunk if fitted is None else min(chunk, fitted)
                hooks.batched = chunk > 1
                with fisher_precision(precision, x.device, onednn), ClsOnlyLastBlock(), \
                        (ReusedBackward() if not hooks.batched else contextlib.nullcontext()):
                    logits = forward(x)  # one class backward after another: activation slopes, attention kept
                logp = F.log_softmax(logits.float(), dim=1)
                probs = logp.detach().exp()
                if sampled_labels:
                    draws = torch.multinomial(probs.cpu(), sampled_labels, replacement=True, generator=generator)
                    draws = draws.to(logp.device)
                    scores = [logp.gather(1, draws[:, j:j + 1]).sum() / sampled_labels ** 0.5
                              for j in range(sampled_labels)]
                else:
                    scores = class_scores(logp, probs, mc_classes, mc_group)
                with fisher_precision(precision, x.device, onednn):
                    if hooks.batched:
                        done = hooks.backward_batched(scores, chunk)
                        fitted = done if done < chunk else fitted
                    else:
                        for i, score in enumerate(scores):  # the output hooks accumulate the squares
                            torch.autograd.grad(score, hooks.stops, retain_graph=i < len(scores) - 1, allow_unused=True)
                n += x.shape[0]
    return hooks.sums, n


CLASS_BATCH_ROWS = 512  # auto on an accelerator: (image, class) pairs per vmapped class backward


def auto_class_batch(device: torch.device, batch_size: int) -> int:
    """Class backward passes per vmapped backward: on an accelerator enough classes for ``CLASS_BATCH_ROWS``
    (image, class) pairs per backward (1 once a batch alone is that large); on a CPU 1, the per-class loop
    (docs/speed.md: the vmapped backward is slower there)."""
    if not accelerator.is_accelerator(device):
        return 1
    return max(1, CLASS_BATCH_ROWS // max(1, batch_size))


def reduce_fisher(sums: dict[str, torch.Tensor], n: int) -> tuple[dict[str, torch.Tensor], int]:
    """Sum the Fisher sums and example counts over DDP ranks (unchanged in a single process)."""
    from utils import distributed
    if not distributed.is_distributed():
        return sums, n
    device = next(iter(sums.values())).device
    total = distributed.all_reduce_sum(torch.tensor([float(n)], dtype=torch.float64, device=device))
    return {k: distributed.all_reduce_sum(v) for k, v in sums.items()}, int(total.item())


def head_fisher(features: torch.Tensor, logits: torch.Tensor, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact Fisher of a linear head's ``rows`` (weight, bias), in closed form.

    With d log p_c / dz_k = [c = k] - p_k, sum_c p_c (d log p_c / dW_k)^2 = p_k (1 - p_k) x^2.
    """
    p = torch.softmax(logits.float(), dim=1)[:, rows]
    coef = p * (1 - p)  # (N, C_rows)
    return coef.t() @ features.float().pow(2), coef.sum(0)


auto_batch_size = accelerator.fit_batch  # images per Fisher batch from the bytes per image and the free bytes


def probe_bytes_per_image(forward: Callable[[torch.Tensor], torch.Tensor], layers: dict[str, AdaptedLayer],
                          images: torch.Tensor, precision: str = "fp32") -> Optional[float]:
    """Peak device memory per image of one forward + one class backward of the Fisher pass on ``images`` (None
    where the device does not count its memory). Runs with gradients on, whatever the caller's mode."""
    with torch.enable_grad():
        peak = accelerator.measure_peak(images.device, lambda: network_fisher(forward, layers, [images], mc_classes=2,
                                                                              precision=precision))
    return None if peak is None else peak / len(images)
