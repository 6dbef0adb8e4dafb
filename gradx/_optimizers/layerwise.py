"""Layer-wise methods: each leaf's (layer's) step rescaled by the ratio of its norms.

========  =====================================================================
lamb      precondition(ema(b1, debias), rms(b2, debias), eps), then
          add_decayed_weights, scale_by_trust_ratio, scale_by_learning_rate
========  =====================================================================

The block ``scale_by_trust_ratio`` lives with the other scaling blocks (scaling.py).
"""

from __future__ import annotations

from typing import Any

import optax

from gradx._optimizers.momentum import ema
from gradx._optimizers.preconditioners import precondition, rms
from gradx._optimizers.scaling import (
    add_decayed_weights,
    scale_by_learning_rate,
    scale_by_trust_ratio,
)
from gradx._protocol.declare import optimizer
from gradx._protocol.gain import closure_value, gain_rule, walk_gain
from gradx._protocol.storage import state_dtype_args
from gradx._protocol.trees import needs_params


def requires_params(
    fn: str, why: str, inner: optax.GradientTransformation
) -> optax.GradientTransformationExtraArgs:
    """``inner`` (its state and updates unchanged) whose ``update`` refuses to run without
    the params, naming the optimizer ``fn`` and ``why`` it reads them, before any block of
    ``inner`` names itself."""
    inner = optax.with_extra_args_support(inner)

    def update(updates, state, params=None, **extra_args):
        needs_params(fn, params, why)
        return inner.update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(inner.init, update)


@gain_rule(requires_params)
def _requires_params_gain(ctx, cells, state, incoming):
    inner = closure_value(cells, "inner", "requires_params")
    return walk_gain(ctx, inner.update, state, incoming)


@optimizer(
    learning_rate=">= 0",
    b1="[0, 1)",
    b2="[0, 1)",
    eps=">= 0",
    eps_root=">= 0",
    weight_decay=">= 0",
)
def lamb(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
    mask: Any = None,
    *,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """LAMB: Adam's direction plus weight decay, rescaled per leaf by a trust ratio.

    For t = 1, 2, ..., with m₀ = v₀ = 0, per leaf (layer) θ of the params::

        m ← β₁·m + (1−β₁)·g            v ← β₂·v + (1−β₂)·g²
        m̂ = m/(1−β₁ᵗ)                   v̂ = v/(1−β₂ᵗ)
        u = m̂/(√(v̂ + ε_root) + ε) + λ·θ
        r = ‖θ‖/‖u‖   (r = 1 where ‖θ‖ = 0 or ‖u‖ = 0)
        θ ← θ − γ·r·u

    ‖·‖ is the L2 norm over the whole leaf (Frobenius for a matrix), so every leaf moves by
    γ·‖θ‖ relative to its own size, whatever the gradient's scale: the point of LAMB for
    large batches. A leaf at the origin (a zero-initialized bias) takes Adam's step.

    Blocks: ``precondition(ema(β₁, debias), rms(β₂, ε_root, debias), ε) →
    add_decayed_weights(λ) → scale_by_trust_ratio() → scale_by_learning_rate(γ)``.

    Args:
      learning_rate: γ ≥ 0, a number or a schedule.
      b1: β₁ in [0, 1).
      b2: β₂ in [0, 1).
      eps: ε ≥ 0, outside the root.
      eps_root: ε_root ≥ 0, inside the root.
      weight_decay: λ ≥ 0, added to Adam's direction before the trust ratio (not multiplied
        by γ separately: the ratio and γ scale it with the rest).
      mask: which leaves decay, as optax's ``mask``: None (all), a pytree of bools with the
        params' structure or a prefix of it (True = decay), or a function of the params
        returning one.
      state_dtype, stochastic_rounding: how m and v are stored: None (the params' dtype; v
        of float16 params in float32, as every never-negative moment: see
        :doc:`/guides/state-dtype`), a float dtype, ``"bfloat16"`` rounded stochastically,
        or ``"int8"`` (blockwise); see :func:`gradx.adam`.

    Returns:
      An optax transformation whose state is a ``HyperparamsState`` holding
      ``b1, b2, eps, eps_root, learning_rate, weight_decay`` around the blocks' states (m
      and v like params; one trust ratio per leaf). ``update`` needs the params. Refused
      inside ``gradx.flat``: the ratio is per leaf, and flat packs the leaves together.

    Reference:
      You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
      ICLR 2020.

    Note:
      Equals ``optax.lamb`` (same arguments, order and defaults; the trust ratio with
      optax's defaults: no norm clipping, coefficient 1, no ε).
    """
    store = state_dtype_args("lamb", state_dtype, stochastic_rounding)
    num = ema(b1, debias=True, **store)
    chain = optax.chain(
        precondition(num, rms(b2, eps_root=eps_root, debias=True, **store), eps),
        add_decayed_weights(weight_decay, mask),
        scale_by_trust_ratio(),
        scale_by_learning_rate(learning_rate),
    )
    return requires_params("lamb", "the trust ratio is ‖θ‖/‖u‖ per leaf", chain)
