"""The autocast policy of the test accelerator (tests/accelerator_backend.py): torch registers no autocast kernels
for a PrivateUse1 device, so the backend registers these, which follow CUDA's policy."""
from __future__ import annotations

import torch
from torch.utils._pytree import tree_flatten, tree_map


# CUDA's autocast policy (aten/src/ATen/autocast_mode.cpp): ops run in the autocast dtype, in fp32, or in the
# widest floating type of their inputs; every other op runs as called
LOWER = {"_convolution", "conv1d", "conv2d", "conv3d", "conv_tbc", "conv_transpose1d", "conv_transpose2d",
         "conv_transpose3d", "convolution", "prelu", "addmm", "addmv", "addr", "matmul", "einsum", "mm", "mv",
         "linalg_vecdot", "linear", "addbmm", "baddbmm", "bmm", "chain_matmul", "linalg_multi_dot",
         "scaled_dot_product_attention", "_scaled_dot_product_flash_attention"}
FP32 = {"acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal", "rsqrt",
        "sinh", "tan", "pow", "softplus", "layer_norm", "native_layer_norm", "group_norm", "frobenius_norm",
        "nuclear_norm", "cosine_similarity", "poisson_nll_loss", "cosine_embedding_loss", "nll_loss", "nll_loss2d",
        "hinge_embedding_loss", "kl_div", "l1_loss", "smooth_l1_loss", "huber_loss", "mse_loss",
        "margin_ranking_loss", "multilabel_margin_loss", "soft_margin_loss", "triplet_margin_loss",
        "multi_margin_loss", "binary_cross_entropy_with_logits", "dist", "pdist", "cdist", "renorm", "logsumexp",
        "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "upsample_bilinear2d", "upsample_bicubic2d",
        "upsample_trilinear3d", "upsample_linear1d", "prod", "cumprod", "cumsum", "linalg_vector_norm",
        "linalg_matrix_norm", "sum", "norm", "softmax", "log_softmax", "cross_entropy_loss", "_softmax",
        "_log_softmax"}
PROMOTE = {"addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "grid_sampler", "index_put", "scatter_add",
           "tensordot", "cat", "stack"}
_AUTOCAST_KEY = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastPrivateUse1)


def autocast_kernel(op, device_type: str, *args, **kwargs):
    """The autocast kernel of ``op`` on a PrivateUse1 device (torch registers none): CUDA's casting policy."""
    name = op.overloadpacket.__name__.rstrip("_")
    with torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_KEY):
        dtype = None
        floats = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)
                  and t.is_floating_point() and t.dtype != torch.float64 and t.device.type == device_type]
        if name in LOWER:
            dtype = torch.get_autocast_dtype(device_type)
        elif name in FP32:
            dtype = torch.float32
        elif name in PROMOTE and floats:
            dtype = max((t.dtype for t in floats), key=lambda d: torch.finfo(d).bits)
        if dtype is not None and floats:
            cast = {id(t) for t in floats}
            args, kwargs = tree_map(lambda t: t.to(dtype) if id(t) in cast else t, (args, kwargs))
        return op(*args, **kwargs)
