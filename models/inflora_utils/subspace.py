"""InfLoRA's subspace algebra: the designed down-projection and the DualGPM-style memory of old inputs."""
from __future__ import annotations

from typing import Any, Optional

import torch


def top_eigvecs(sym: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` leading eigenvalues (descending) and eigenvectors (columns) of a symmetric matrix."""
    values, vectors = torch.linalg.eigh(sym)
    order = values.flip(0)[:k], vectors.flip(1)[:, :k]
    return order[0].clamp(min=0), order[1]


class SubspaceMemory:
    """An orthonormal basis M (d x k) of the input space that old tasks occupy, at one layer.

    DualGPM storage: while ``k <= d / 2`` the basis M itself is stored; beyond, its orthogonal
    complement (d x (d - k)), which is smaller. :meth:`project_out` is ``(I - M M^T) X`` in both
    cases. :meth:`update` is GPM's rule: given the Gram matrix ``C = H H^T`` of a finished task's
    inputs H, the directions of the residual ``(I - M M^T) H`` are added in decreasing order of
    energy until ``||M^T H||^2 + sum of added sigma_i^2 >= threshold * ||H||^2``.
    """

    def __init__(self, dim: int):
        self.dim = dim
        self.basis = torch.zeros(dim, 0)      # M, or its complement when ``dual``
        self.dual = False

    @property
    def rank(self) -> int:
        return self.dim - self.basis.shape[1] if self.dual else self.basis.shape[1]

    def retained_basis(self) -> torch.Tensor:
        """M (d x k), rebuilt from the complement in dual storage."""
        if not self.dual:
            return self.basis
        proj = torch.eye(self.dim, dtype=self.basis.dtype, device=self.basis.device) - self.basis @ self.basis.t()
        return top_eigvecs(proj, self.rank)[1]

    def project_out(self, x: torch.Tensor) -> torch.Tensor:
        """``(I - M M^T) x`` for a (d x n) matrix x."""
        b = self.basis.to(x)
        return b @ (b.t() @ x) if self.dual else x - b @ (b.t() @ x)

    def update(self, gram: torch.Tensor, threshold: float) -> int:
        """Add the residual directions of a task with input Gram ``gram`` (d x d); returns how many."""
        gram = gram.double()
        basis = self.retained_basis().to(gram)
        total = torch.trace(gram)
        if total <= 0:
            return 0
        retained = torch.trace(basis.t() @ gram @ basis) if basis.shape[1] else gram.new_zeros(())
        residual = self.project_out(self.project_out(gram).t()).t()   # P C P
        values, vectors = top_eigvecs(residual, self.dim - basis.shape[1])
        energy = retained + torch.cumsum(values, 0)
        reached = (energy >= threshold * total).nonzero()
        k = int(reached[0]) + 1 if len(reached) else len(values)
        if retained >= threshold * total:
            k = 0
        new = torch.cat((basis, vectors[:, :k]), dim=1)
        self.dual = new.shape[1] > self.dim // 2
        if self.dual:
            proj = torch.eye(self.dim, dtype=new.dtype, device=new.device) - new @ new.t()
            self.basis = top_eigvecs(proj, self.dim - new.shape[1])[1].float()
        else:
            self.basis = new.float()
        return k

    def state(self) -> dict[str, Any]:
        return {"basis": self.basis, "dual": self.dual}

    def load(self, state: dict[str, Any]) -> None:
        self.basis, self.dual = state["basis"], bool(state["dual"])


def designed_down_projection(gram: torch.Tensor, memory: SubspaceMemory, rank: int) -> torch.Tensor:
    """InfLoRA's A_t (rank x d): the leading eigenvectors of ``P C P`` (P = I - M M^T, C = H H^T of
    the new task's inputs): the directions of the new task's inputs outside the old tasks' subspace."""
    residual = memory.project_out(memory.project_out(gram.double()).t()).t()
    return top_eigvecs(residual, rank)[1].t().float()


def input_gram(inputs: torch.Tensor, gram: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``gram + X^T X`` over the rows (tokens) of ``inputs`` (..., d)."""
    flat = inputs.detach().reshape(-1, inputs.shape[-1]).double()
    out = flat.t() @ flat
    return out if gram is None else gram + out
