"""``torch.optim.Muon`` (torch 2.13) for :mod:`gradx.compat.torch`, from gradx's blocks.

Kept apart from ``torch.py`` (near the modules' size limit). torch's Muon takes matrices only
and differs from ``optax.contrib.muon`` (``gradx.muon``) in four places: its momentum is an
unbiased EMA (``buf.lerp_(g, 1 − μ)``, Nesterov ``g.lerp(buf, μ)``), the Newton–Schulz
iteration runs in bfloat16 whatever the params' dtype, the first scaling divides by
max(‖X‖_F, ε), and the width scaling is √max(1, rows/cols) (torch's weights are (out, in)).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gradx._optimizers.matrices import (
    MuonDimensionNumbers,
    ns_steps_arg,
    scale_by_shape,
)
from gradx._optimizers.matrices import (
    ns_coefficients as checked_coefficients,
)
from gradx._optimizers.momentum import EmaState
from gradx._optimizers.orthogonal import orthogonalize
from gradx._optimizers.preconditioners import ema_of
from gradx._optimizers.scaling import decoupled_weight_decay, scale_by_learning_rate
from gradx._protocol.declare import optimizer
from gradx._protocol.gain import Gain, closure_value, gain_rule, in_gain_dtype
from gradx._protocol.storage import moment_codec, state_dtype_args
from gradx._protocol.trees import check_tree
from gradx.compat._torch_blocks import (
    check_like_torch,
    check_torch_flag,
    no_params,
    torch_off_if_zero,
)

ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


def _check_matrices(params: Any) -> None:
    """torch.optim.Muon's refusals: a param that is not a 2-D real matrix."""
    for path, p in jax.tree_util.tree_leaves_with_path(params):
        where = jax.tree_util.keystr(path) or "(the root)"
        if np.ndim(p) != 2:
            raise ValueError(
                f"Muon: params must be 2-D matrices (torch.optim.Muon takes only matrices), got "
                f"shape {np.shape(p)} at {where}; optimize the other params with another "
                "optimizer (optax.partition), or use gradx.muon, which gives them Adam"
            )
        if jnp.iscomplexobj(p):
            raise TypeError(
                f"Muon: params must be real (torch.optim.Muon refuses complex params), got "
                f"{jnp.asarray(p).dtype} at {where}"
            )


def _torch_momentum(
    momentum: Any, nesterov: bool, state_dtype: Any = None, stochastic_rounding: bool = False
) -> optax.GradientTransformationExtraArgs:
    """Block: torch Muon's buffer b ← b + (1−μ)·(g − b) = μ·b + (1−μ)·g (b₀ = 0, no bias
    correction); emits b, or (1−μ)·g + μ·b with ``nesterov``. Refuses what torch refuses.
    b is stored as ``state_dtype`` says (see :func:`gradx.adam`)."""
    codec = moment_codec("Muon", "state_dtype", None, state_dtype, stochastic_rounding)

    def init(params: Any) -> EmaState:
        _check_matrices(params)
        return EmaState(count=jnp.zeros([], jnp.int32), mean=codec.init(params, "mean"))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        old = codec.decode(state.mean)
        check_tree(updates, old, "momentum buffer in the state")
        mu = jnp.asarray(momentum)
        mean = jax.tree.map(lambda g, b: ema_of(mu, g, b), updates, old)
        mean, stored_mean = codec.store(mean, state.mean, (mu, 1 - mu, updates, False))
        out = jax.tree.map(lambda g, b: ema_of(mu, g, b), updates, mean) if nesterov else mean
        return out, EmaState(count=optax.safe_increment(state.count), mean=stored_mean)

    return optax.GradientTransformationExtraArgs(init, update)


@gain_rule(_torch_momentum)
def _torch_momentum_gain(ctx, cells, state, incoming):
    mu = in_gain_dtype(ctx, closure_value(cells, "momentum", "torch Muon's momentum"))
    nesterov = closure_value(cells, "nesterov", "torch Muon's momentum")
    return Gain((1 - mu) * (1 + mu) if nesterov else 1 - mu), None


@optimizer(learning_rate=">= 0", momentum=">= 0", eps=">= 0", weight_decay=">= 0")
def torch_muon(
    learning_rate, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps, adjust_lr_fn,
    state_dtype=None, stochastic_rounding: bool = False,
):  # fmt: skip
    """momentum → orthogonalize (bfloat16, max(‖X‖, ε)) → √max(1, rows/cols) or
    0.2·√max(rows, cols) → ×(−γ) → [−γ·λ·θ]: torch 2.13's Muon."""
    rms = 0.2 if adjust_lr_fn == "match_rms_adamw" else None
    decay = [] if weight_decay is None else [decoupled_weight_decay(weight_decay, learning_rate)]
    return optax.chain(
        _torch_momentum(momentum, nesterov, state_dtype, stochastic_rounding),
        orthogonalize(ns_coefficients, ns_steps, eps, eps_as_floor=True, ns_dtype=jnp.bfloat16),
        # rows are torch's output axis: its ratio A/B is fan_out/fan_in with these numbers
        scale_by_shape(MuonDimensionNumbers(reduction_axis=1, output_axis=0), rms),
        scale_by_learning_rate(learning_rate),
        *decay,
    )


@no_params
def Muon(
    lr: optax.ScalarOrSchedule = 1e-3,
    weight_decay: float = 0.1,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_coefficients: tuple[float, float, float] = (3.4445, -4.775, 2.0315),
    eps: float = 1e-7,
    ns_steps: int = 5,
    adjust_lr_fn: str | None = None,
    *,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """``torch.optim.Muon``: orthogonalised momentum for 2-D params, with torch's numbers.

    torch 2.13's update of each matrix W (shape A×B), for t = 1, 2, ..., with b₀ = 0::

        b ← μ·b + (1−μ)·g                      (torch's lerp; no bias correction)
        M = (1−μ)·g + μ·b  if nesterov, else b
        O = NS(M): X = bf16(M) / max(‖bf16(M)‖_F, ε), then ns_steps steps
            A = X·Xᵀ, X ← a·X + (b·A + c·A·A)·X, in bfloat16 (float32 accumulation)
        W ← W − γ·λ·W − γ·r·O,   r = √max(1, A/B)  ("original", None)
                                 r = 0.2·√max(A, B) ("match_rms_adamw")

    This is ``gradx.muon``'s orthogonalize block with torch's conventions, built from the
    blocks ``_torch_momentum(μ, nesterov) → orthogonalize(..., eps_as_floor=True,
    ns_dtype=bfloat16) → scale_by_shape(MuonDimensionNumbers(1, 0), 0.2 or None) →
    scale_by_learning_rate(γ) → decoupled_weight_decay(λ, γ)``; its state holds
    ``learning_rate, weight_decay, momentum, eps``.

    Args:
      lr: γ ≥ 0, a number or a schedule.
      weight_decay: λ ≥ 0, decoupled (times γ, not through the orthogonalisation).
      momentum: μ ≥ 0 (torch's only check).
      nesterov: the Nesterov form.
      ns_coefficients: (a, b, c), 3 numbers.
      eps: ε ≥ 0, the floor of the Frobenius norm.
      ns_steps: an integer in [0, 100) (torch's bound), static.
      adjust_lr_fn: None or ``"original"`` (Jordan's √max(1, A/B)), or
        ``"match_rms_adamw"`` (Moonshot's 0.2·√max(A, B)).
      state_dtype, stochastic_rounding: gradx's: how the buffer b is stored (a float
        dtype, ``"bfloat16"`` rounded stochastically, or ``"int8"``; see :func:`gradx.adam`).

    Raises:
      ValueError: at ``init``, a param that is not 2-D (torch's rule: use ``gradx.muon``,
        which gives the other leaves Adam, or ``optax.partition``); a bad number,
        ``adjust_lr_fn`` or ``ns_coefficients`` at construction.
      TypeError: a complex param.

    Note:
      torch iterates in bfloat16 also for float64 params; so does this (the golden
      trajectories agree to float64 rounding). ``optax.contrib.muon`` (``gradx.muon``)
      differs: ``docs/conventions.md``, Muon.
    """
    cls = "Muon"
    store = state_dtype_args(cls, state_dtype, stochastic_rounding)
    check_like_torch(cls, torch_muon, lr=lr, weight_decay=weight_decay, momentum=momentum, eps=eps)
    check_torch_flag(cls, "nesterov", nesterov)
    if adjust_lr_fn not in ADJUST_LR_FNS:
        raise ValueError(
            f"{cls}: adjust_lr_fn must be None, 'original' or 'match_rms_adamw', got "
            f"{adjust_lr_fn!r}"
        )
    ns_steps_arg(cls, ns_steps, most=100)
    if np.shape(ns_coefficients) != (3,):  # torch's: one triple, not gradx.muon's schedule
        raise ValueError(
            f"{cls}: ns_coefficients must be 3 numbers (a, b, c), got {ns_coefficients!r}"
        )
    coefficients = checked_coefficients(cls, ns_coefficients, ns_steps, "ns_coefficients")
    return torch_muon(
        learning_rate=lr,
        weight_decay=torch_off_if_zero(weight_decay),
        momentum=momentum,
        nesterov=nesterov,
        ns_coefficients=tuple(float(c) for c in coefficients),
        eps=eps,
        ns_steps=int(ns_steps),
        adjust_lr_fn=adjust_lr_fn,
        **store,
    )
