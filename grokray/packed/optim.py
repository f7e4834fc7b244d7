"""PackedAdamW: torch's AdamW rule over all members' parameters at once, per-member hyper-parameters,
and an ``active`` mask that leaves a stopped member bitwise untouched."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from grokray.packed.model import PackedLoopedTransformer


class PackedAdamW:
    """AdamW over the flat ``[K, P]`` parameters of a :class:`PackedLoopedTransformer`,
    with per-member lr, weight decay and betas, and an ``active`` mask.

    Per element, the update rule of ``torch.optim.AdamW``, written in the order of operations
    of its fused CPU kernel::

        p  = p * (1 - lr * wd)                    # decoupled decay, only columns [0, n_decay)
        m  = lerp(m, g, 1 - beta1)
        v  = v * beta2 + ((1 - beta2) * g) * g
        p  = p + (-lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    (torch 2.13's fused kernel still rounds ~0.1% of the elements 1 ulp apart from this, as its
    ``foreach`` implementation does: same rule, other rounding; tests/unit/test_packed.py
    measures what that does over 200 steps.)

    The per-member scalars are computed on the host in float64 (as torch does) and passed as
    one ``[K, 8]`` float32 tensor (:meth:`prepare`); :meth:`update` is pure device code
    (graph-capturable). A member with ``active = False`` keeps its parameters, moments and
    step count bitwise: the new values are selected with ``torch.where``, so even NaNs in
    its gradient never reach its state, and never reach another member's (all ops are
    elementwise, or per member).
    """

    #: Columns of the coefficient tensor :meth:`prepare` returns.
    COEFS = ("wd_mul", "lerp_w", "beta2", "one_minus_beta2", "bc2_sqrt", "neg_step_size", "eps", "active")

    def __init__(self, model: PackedLoopedTransformer, weight_decay: Sequence[float],
                 betas: Sequence[tuple[float, float]], eps: float = 1e-8):
        K = model.n_members
        if len(weight_decay) != K or len(betas) != K:
            raise ValueError(f"need one weight decay and one betas pair per member ({K})")
        self.model, self.eps = model, float(eps)
        self.weight_decay = [float(w) for w in weight_decay]
        self.betas = [(float(b1), float(b2)) for b1, b2 in betas]
        self.exp_avg = torch.zeros_like(model.flat)                      # [K, P]
        self.exp_avg_sq = torch.zeros_like(model.flat)                   # [K, P]
        self.steps = [0] * K                                              # AdamW step count per member

    def zero_grad(self) -> None:
        self.model.zero_grad()

    def prepare(self, lrs: Sequence[float], active: Sequence[bool]) -> torch.Tensor:
        """Advance the step count of the active members; their coefficients ``[K, 8]`` (CPU float32)."""
        rows = []
        for k, (lr, on) in enumerate(zip(lrs, active)):
            b1, b2 = self.betas[k]
            if on:
                self.steps[k] += 1
            t = max(self.steps[k], 1)
            bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
            rows.append((1 - lr * self.weight_decay[k], 1 - b1, b2, 1 - b2, math.sqrt(bc2), -(lr / bc1),
                         self.eps, 1.0 if on else 0.0))
        # float64 -> float32 once, as the fused kernel casts its double scalars to the parameter dtype.
        return torch.tensor(rows, dtype=torch.float64).to(torch.float32)

    @torch.no_grad()
    def update(self, coef: torch.Tensor) -> None:
        """One AdamW step for all members from ``coef [K, 8]`` (on the parameters' device)."""
        p, g, m, v = self.model.flat, self.model.flat_grad, self.exp_avg, self.exp_avg_sq   # [K, P] each
        nd = self.model.n_decay
        c = coef.to(p.dtype).unsqueeze(-1)                                # [K, 8, 1]: each c[:, i] is [K, 1]
        wd_mul, lerp_w, beta2, omb2, bc2_sqrt, neg_step, eps = (c[:, i] for i in range(7))
        active = c[:, 7] > 0                                              # [K, 1] bool

        m_new = torch.lerp(m, g, lerp_w)                                  # [K, P]
        v_new = torch.addcmul(v * beta2, omb2 * g, g)                     # v*b2 + ((1-b2)*g)*g
        denom = v_new.sqrt().div_(bc2_sqrt).add_(eps)
        step = (neg_step * m_new).div_(denom)                             # (-lr/bc1) * m / denom
        p_new = torch.empty_like(p)
        torch.mul(p[:, :nd], wd_mul, out=p_new[:, :nd])                   # decay matrices and embeddings only
        p_new[:, nd:] = p[:, nd:]
        p_new.add_(step)
        # Stopped members keep every bit: select, never blend (NaN * 0 is NaN).
        p.copy_(torch.where(active, p_new, p))
        m.copy_(torch.where(active, m_new, m))
        v.copy_(torch.where(active, v_new, v))

    def step(self, lrs: Sequence[float], active: Sequence[bool] | None = None) -> None:
        """:meth:`prepare` + :meth:`update` (eager use; the trainer stages the coefficients itself)."""
        active = [True] * len(lrs) if active is None else list(active)
        self.update(self.prepare(lrs, active).to(self.model.flat.device))

    def state_dict(self) -> dict[str, Any]:
        return {"exp_avg": self.exp_avg.detach().clone(), "exp_avg_sq": self.exp_avg_sq.detach().clone(),
                "steps": list(self.steps), "weight_decay": list(self.weight_decay),
                "betas": [list(b) for b in self.betas], "eps": self.eps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.exp_avg.copy_(state["exp_avg"])                              # in place: a CUDA graph may hold them
        self.exp_avg_sq.copy_(state["exp_avg_sq"])
        self.steps = [int(s) for s in state["steps"]]
