"""Adafactor: a factored second moment, update clipping and a step relative to the params.

=========  ===================================================================
adafactor  scale_by_factored_rms → [clip_by_block_rms] → scale_by_learning_rate →
           [scale_by_param_block_rms] → [ema] → [decoupled_weight_decay]
=========  ===================================================================

The blocks are in ``factored.py``.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import optax

from gradx._optimizers.factored import (
    check_min_dim,
    clip_by_block_rms,
    scale_by_factored_rms,
    scale_by_param_block_rms,
)
from gradx._optimizers.layerwise import requires_params
from gradx._optimizers.momentum import ema
from gradx._optimizers.scaling import decoupled_weight_decay, scale_by_learning_rate
from gradx._protocol.declare import optimizer
from gradx._protocol.dtypes import dtype_arg
from gradx._protocol.storage import state_dtype_args


@optimizer(
    learning_rate=">= 0",
    decay_rate=">= 0",
    decay_offset="int >= 0",
    clipping_threshold="> 0",
    momentum="[0, 1)",
    weight_decay_rate=">= 0",
    eps="> 0",
)
def adafactor(
    learning_rate: optax.ScalarOrSchedule | None = None,
    min_dim_size_to_factor: int = 128,
    decay_rate: float = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: float | None = 1.0,
    momentum: float | None = None,
    dtype_momentum: Any = jnp.float32,
    weight_decay_rate: optax.ScalarOrSchedule | None = None,
    eps: float = 1e-30,
    factored: bool = True,
    weight_decay_mask: Any = None,
    *,
    state_dtype: Any = None,
    stochastic_rounding: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Adafactor: Adam's second moment in sublinear memory, with a step relative to θ.

    For t = 1, 2, ..., with β̂_t = 1 − (t − decay_offset)^(−c) and G = g² + ε, for each
    leaf θ of the params (a matrix factored over its two largest axes, rows and columns,
    when both have at least ``min_dim_size_to_factor`` elements)::

        R ← β̂_t·R + (1−β̂_t)·rowmean(G)   C ← β̂_t·C + (1−β̂_t)·colmean(G)   (matrices)
        V̂ = R·C/mean(R)                      (others: V̂ ← β̂_t·V̂ + (1−β̂_t)·G)
        u = g/√V̂
        u ← u / max(1, RMS(u)/d)             (update clipping, d = clipping_threshold)
        u ← γ·max(RMS(θ), 10⁻³)·u            (multiply_by_parameter_scale)
        m ← β₁·m + (1−β₁)·u;  u = m         (momentum β₁)
        θ ← θ − u − λ·θ                       (weight_decay_rate λ, not multiplied by γ)

    RMS(x) = √mean(x²) over the whole leaf. Memory: an m×n matrix keeps m + n numbers
    instead of Adam's 2·m·n (none for the momentum unless it is set).

    Blocks: ``scale_by_factored_rms(factored, c, decay_offset, min_dim_size_to_factor, ε) →
    clip_by_block_rms(d) → scale_by_learning_rate(γ) → scale_by_param_block_rms(10⁻³) →
    ema(β₁) → decoupled_weight_decay(λ, 1)``, the bracketed ones of the formula switched off
    by None (or False).

    Args:
      learning_rate: γ ≥ 0, a number or a schedule; None (optax's default) is γ = 1: with
        ``multiply_by_parameter_scale`` the step is then RMS(θ) in size, the paper's relative
        step without its 1/√t decay (pass a schedule for that).
      min_dim_size_to_factor: factor a matrix only if its two largest axes both have at
        least this many elements. Static (with ``factored``): it decides the state's shapes.
      decay_rate: c ≥ 0, the exponent of β̂_t (0.8 in the paper).
      decay_offset: an integer ≥ 0, subtracted from the step number in β̂_t (fine-tuning
        from a restored state whose count is past it). Steps with t ≤ decay_offset give
        NaN, as in optax: the count starts at 0 in a fresh state. In the state (int32).
      multiply_by_parameter_scale: scale each leaf's step by max(RMS(θ), 10⁻³).
      clipping_threshold: d > 0, or None for no clipping.
      momentum: β₁ in [0, 1) for an EMA of the updates (no bias correction), or None
        (the default, no momentum and no memory for it).
      dtype_momentum: the dtype the momentum is stored in (float32 by default, as optax).
      weight_decay_rate: λ ≥ 0, a number or a schedule, or None; subtracted as λ·θ after
        everything else, not multiplied by γ (optax's convention).
      eps: ε > 0, added to g² (the paper's ε₁ = 10⁻³⁰; ε = 0 would divide 0 by 0 on a
        row of zero gradients).
      factored: factor the matrices (False: a full second moment for every leaf).
      weight_decay_mask: which leaves decay, as optax's ``mask``: None (all), a pytree of
        bools with the params' structure or a prefix of it, or a function of the params.
      state_dtype, stochastic_rounding: how the second-moment statistics (v, and the
        factored v_row, v_col) are stored: a float dtype, ``"bfloat16"`` rounded
        stochastically, or ``"int8"`` (blockwise; see :func:`gradx.adam`). The momentum
        follows them where ``dtype_momentum`` is None (its default, float32, wins).

    Returns:
      An optax transformation whose state holds ``learning_rate``, ``decay_rate``,
      ``decay_offset``, ``clipping_threshold``, ``momentum``, ``weight_decay_rate`` and
      ``eps`` (those not None). ``update`` needs the params when
      ``multiply_by_parameter_scale`` or weight decay is on. Refused inside ``gradx.flat``
      (``fit`` then runs it leaf by leaf): its blocks work per leaf.

    Reference:
      Shazeer, Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
      ICML 2018.

    Note:
      Equals ``optax.adafactor`` with the same arguments (same positions and defaults),
      except that β̂_t is computed in the hyperparameters' dtype (float64 with float64
      params; optax computes it in float32 always) and ε = 0 and d ≤ 0 are refused.
      ``gradx.compat.torch.Adafactor`` and ``gradx.compat.keras.Adafactor`` reproduce
      torch's and Keras's variants, whose relative step, ε and weight decay differ
      (``docs/conventions.md``).
    """
    check_min_dim("adafactor", min_dim_size_to_factor)
    dtype_arg("adafactor", "dtype_momentum", dtype_momentum)
    store = state_dtype_args("adafactor", state_dtype, stochastic_rounding)
    blocks = [
        scale_by_factored_rms(
            factored, decay_rate, decay_offset, min_dim_size_to_factor, eps, **store
        )
    ]
    if clipping_threshold is not None:
        blocks.append(clip_by_block_rms(clipping_threshold))
    # −γ·u here and −λ·θ below: optax's γ·u, +λ·θ and the final ×(−1), equal bit for bit.
    blocks.append(scale_by_learning_rate(1.0 if learning_rate is None else learning_rate))
    if multiply_by_parameter_scale:
        blocks.append(scale_by_param_block_rms())
    if momentum is not None:
        blocks.append(ema(momentum, accumulator_dtype=dtype_momentum, **store))
    if weight_decay_rate is not None:
        blocks.append(decoupled_weight_decay(weight_decay_rate, 1.0, mask=weight_decay_mask))
    if multiply_by_parameter_scale:
        why = "multiply_by_parameter_scale scales each leaf's step by RMS(θ)"
    elif weight_decay_rate is not None:
        why = "weight_decay_rate subtracts λ·θ"
    else:
        return optax.chain(*blocks)
    return requires_params("adafactor", why, optax.chain(*blocks))
