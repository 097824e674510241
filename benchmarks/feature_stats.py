"""Side-by-side timings of the class-statistics kernels against their straightforward forms, on one device:

- SEED's overlap criterion: ``mean_pairwise_kl`` (each class factorised once) vs ``gaussian_kl`` pair by pair;
- GMM sampling for the classifier alignment: ``StackedGMM.sample`` (in place, ``index_select``) vs the
  advanced-indexing formula ``means[c, k] + noise * std[c, k]``.

Prints each pair's seconds (median of ``--repeats``), the ratio, and the largest difference of the results
(0 for the sampling: the same draws, bitwise). ``python -m benchmarks.feature_stats [--dim 1280 --classes 10]``."""
from __future__ import annotations

import argparse
from typing import Optional

import torch

from benchmarks.speed import timed
from models.feature_utils.gaussians import gaussian_kl, mean_pairwise_kl
from models.second_order_utils.pretuning import DiagonalGMM, StackedGMM


def class_statistics(n_classes: int, dim: int, per_class: int, device: torch.device) -> list:
    """SEED-like Gaussians: ``per_class`` features per class (rank-deficient covariance) + 1e-4 I."""
    gen = torch.Generator().manual_seed(0)
    stats = []
    for _ in range(n_classes):
        x = (torch.randn(per_class, dim, generator=gen) * torch.rand(dim, generator=gen)).to(device)
        stats.append((x.mean(0), torch.cov(x.t()).reshape(dim, dim) + 1e-4 * torch.eye(dim, device=device)))
    return stats


def reference_sample(stacked: StackedGMM, per_class: int, seed: int) -> torch.Tensor:
    gen = torch.Generator(device=stacked.weights.device).manual_seed(seed)
    comp = torch.multinomial(stacked.weights, per_class, replacement=True, generator=gen)
    rows = torch.arange(len(stacked.classes), device=stacked.weights.device)[:, None]
    noise = torch.randn(len(stacked.classes), per_class, stacked.means.shape[2], generator=gen,
                        device=stacked.weights.device)
    return (stacked.means[rows, comp] + noise * stacked.std[rows, comp]).reshape(-1, stacked.means.shape[2])


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=1280, help="feature size (EfficientNet-Lite0: 1280, ViT-B: 768)")
    parser.add_argument("--classes", type=int, default=10, help="classes of one task (KL) ")
    parser.add_argument("--per_class", type=int, default=11, help="features per class of the KL statistics")
    parser.add_argument("--align_classes", type=int, default=100, help="seen classes sampled by the alignment")
    parser.add_argument("--samples", type=int, default=256, help="GMM samples per class per epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    stats = class_statistics(args.classes, args.dim, args.per_class, device)
    n = len(stats)
    pairwise = (lambda: float(torch.stack([gaussian_kl(*stats[i], *stats[j])
                                           for i in range(n) for j in range(n) if i != j]).mean()))
    t_ref, ref = timed(pairwise, device, args.repeats)
    t_new, new = timed(lambda: mean_pairwise_kl(stats), device, args.repeats)
    print(f"SEED mean pairwise KL, {n} classes, D={args.dim} ({device}):")
    print(f"  pair by pair {t_ref:.3f} s   factorised once {t_new:.3f} s   ratio {t_ref / t_new:.1f}x   "
          f"relative difference {abs(new - ref) / abs(ref):.1e}")

    gen = torch.Generator().manual_seed(1)
    gmms = {c: DiagonalGMM(torch.full((5,), 0.2), torch.randn(5, args.dim, generator=gen),
                           torch.rand(5, args.dim, generator=gen) + 0.1) for c in range(args.align_classes)}
    stacked = StackedGMM({c: DiagonalGMM(g.weights.to(device), g.means.to(device), g.variances.to(device))
                          for c, g in gmms.items()})
    t_ref, ref = timed(lambda: reference_sample(stacked, args.samples, 2), device, args.repeats)
    t_new, (new, _) = timed(
        lambda: stacked.sample(args.samples, torch.Generator(device=device).manual_seed(2)), device, args.repeats)
    print(f"GMM sampling, {args.align_classes} classes x {args.samples} samples, D={args.dim}:")
    print(f"  advanced indexing {t_ref:.3f} s   in place index_select {t_new:.3f} s   ratio {t_ref / t_new:.2f}x   "
          f"bitwise equal {torch.equal(new, ref)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
