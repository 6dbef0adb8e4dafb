"""``state_dtype=`` and ``stochastic_rounding=``: how optimizer states store their moments.

Checked against independent references: a NumPy Adam with float32 moments on bfloat16 params,
the expectation of stochastic rounding, a NumPy transcription of the int8 maps (written from
their definition as grids of 2ᵉ·(1 + f/8), not from the bits gradx computes them with), the
blockwise quantiser and int8 Adam read as stored, and float32 Adam on a small problem; then
the machinery every state must keep working with (hyperparameters, vmap, pickle, orbax, effective learning rate, fit).
"""

from __future__ import annotations

import os
import pathlib
import pickle
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx
import gradx.compat.keras
import gradx.compat.optax
import gradx.compat.torch
from gradx._protocol.quantized import decode, map_values, quantize, quantized_full
from gradx._protocol.storage import round_stochastically

BF16 = jnp.bfloat16
STORED = (gradx.RoundedMoment, gradx.SignedFloat8Moment, gradx.UnsignedFloat8Moment)


def _stored_kinds(state):
    nodes = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, STORED))
    return {type(x) for x in nodes if isinstance(x, STORED)}


# ------------------------------------------------------------ float32 state, bf16 params


def test_float32_state_on_bfloat16_params_is_adam_with_float32_moments():
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=(2, 5)).astype(BF16) for _ in range(6)]
    theta = rng.normal(size=(2, 5)).astype(BF16)
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8

    def run(opt):
        params = {"w": jnp.asarray(theta)}
        state = opt.init(params)
        for g in grads:
            updates, state = opt.update({"w": jnp.asarray(g)}, state, params)
            params = optax.apply_updates(params, updates)
        return params["w"], state.inner_state[0]

    got, inner = run(gradx.adam(lr, state_dtype="float32"))
    assert got.dtype == BF16
    assert inner.direction.mean["w"].dtype == inner.by.nu["w"].dtype == jnp.float32
    same, _ = run(gradx.adam(lr, mu_dtype=jnp.float32, nu_dtype=jnp.float32))
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(same, np.float32))
    _, default = run(gradx.adam(lr))  # without state_dtype: moments in the params' bfloat16
    assert default.direction.mean["w"].dtype == default.by.nu["w"].dtype == BF16

    # NumPy, written from Kingma & Ba: float32 moments, each update rounded to bf16 and added
    # to the bf16 params (optax.apply_updates adds in the params' dtype).
    # The hyperparameters are float32 numbers (gradx stores them so): 1 − β in float32.
    t32, m, v = theta.copy(), np.zeros((2, 5), np.float32), np.zeros((2, 5), np.float32)
    f = np.float32
    b1, b2 = f(b1), f(b2)
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float32)
        m = b1 * m + (f(1) - b1) * g
        v = b2 * v + (f(1) - b2) * g * g
        m_hat, v_hat = m / (f(1) - b1**t), v / (f(1) - b2**t)
        u = (-f(lr) * m_hat / (np.sqrt(v_hat) + f(eps))).astype(BF16)
        t32 = (t32.astype(np.float32) + u.astype(np.float32)).astype(BF16)
    np.testing.assert_allclose(inner.direction.mean["w"], m, rtol=1e-6)
    np.testing.assert_allclose(inner.by.nu["w"], v, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(got, np.float32), t32.astype(np.float32), rtol=2**-8)


# ------------------------------------------------------------ stochastic rounding


def test_stochastic_rounding_is_unbiased_reproducible_and_keeps_small_increments():
    rng = np.random.default_rng(1)
    ulp = 2.0**-7  # bfloat16's spacing in [1, 2)
    between = 1 + ulp * rng.uniform(size=2048)  # strictly between two bfloat16 neighbours
    x = jnp.asarray(np.concatenate([between, -between]), jnp.float32)
    seeds = jnp.arange(512, dtype=jnp.uint32) * jnp.uint32(2654435761)
    draws = jax.jit(jax.vmap(round_stochastically, in_axes=(None, 0)))(x, seeds)
    d = np.asarray(draws, np.float64)
    lo, hi = np.floor(np.abs(np.asarray(x)) / ulp) * ulp, np.ceil(np.abs(np.asarray(x)) / ulp) * ulp
    assert np.all((np.abs(d) == lo) | (np.abs(d) == hi))  # one of the two neighbours
    err = d.mean(axis=0) - np.asarray(x, np.float64)
    p = (np.abs(np.asarray(x, np.float64)) - lo) / ulp
    sigma = ulp * np.sqrt(p * (1 - p) / len(seeds))
    assert np.all(np.abs(err) <= 6 * sigma + 1e-12), np.max(np.abs(err) / sigma)
    assert abs(err.mean()) < ulp / 200  # no bias overall
    again = jax.jit(round_stochastically)(x, seeds[3])
    np.testing.assert_array_equal(np.asarray(again), np.asarray(draws[3]))

    # An EMA of a constant 1 with β = 0.999: rounded to nearest, bfloat16 stalls once the
    # increment (1−β)(1−m) is below half a spacing (near m = 0.25); rounded stochastically
    # its mean follows the float32 value 1 − β¹⁰⁰⁰.
    def ema_after(stochastic):
        # a float32 β, as an optimizer's state holds it (a Python 0.999 is weakly typed:
        # the block would compute in bfloat16, where 0.999 is 1.0)
        decay = jnp.float32(0.999)
        block = gradx.ema(decay, state_dtype="bfloat16", stochastic_rounding=stochastic)
        ones = {"m": jnp.ones(1024, BF16)}

        def step(state, _):
            return block.update(ones, state)[1], None

        state, _ = jax.lax.scan(step, block.init(ones), None, length=1000)
        mean = state.mean.values["m"] if stochastic else state.mean["m"]
        return float(jnp.mean(mean.astype(jnp.float32)))

    want = 1 - 0.999**1000
    assert abs(ema_after(True) - want) < 0.01 * want
    assert ema_after(False) < 0.5 * want

    opt = gradx.adam(0.1, state_dtype="bfloat16", stochastic_rounding=True)
    params = {"w": jnp.linspace(-1, 1, 300)}
    update = jax.jit(opt.update)
    runs = []
    for _ in range(2):
        state = opt.init(params)
        for k in range(3):
            _, state = update(jax.tree.map(lambda p, k=k: jnp.sin(p * (k + 1)), params), state)
        runs.append(state)
    for a, b in zip(*map(jax.tree.leaves, runs), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    mean = runs[0].inner_state[0].direction.mean
    assert isinstance(mean, gradx.RoundedMoment) and int(mean.count) == 3
    assert mean.values["w"].dtype == BF16


def test_rounded_and_int8_steps_keep_no_copy_of_an_old_moment():
    """Donated as in a training step: a stochastically rounded moment is read as stored, so
    the step copies no old moment and needs no temporary of a moment's size. So is int8
    Adam's, which also takes its blocks' absmax in one pass over the old codes and the
    gradient: no float32 temporary of the new moments, no copy of the old codes."""
    params = jnp.zeros(4096, jnp.float32)
    rules = {
        "bfloat16_sr": gradx.adam(1e-3, state_dtype="bfloat16", stochastic_rounding=True),
        "sgd_sr": gradx.sgd(1e-3, 0.9, state_dtype="bfloat16", stochastic_rounding=True),
        "int8": gradx.adam(1e-3, state_dtype="int8"),
    }
    for name, opt in rules.items():

        def step(p, s, g, opt=opt):
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s

        lowered = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt.init(params), params)
        compiled = lowered.compile()
        big_copies = re.findall(r"(\w+)\[4096\]\{0\} copy\(", compiled.as_text())
        temporaries = compiled.memory_analysis().temp_size_in_bytes
        assert not big_copies, (name, big_copies)
        assert temporaries < 1024, (name, temporaries)


# ------------------------------------------------------------ int8


def _numpy_map(signed):
    """The int8 maps by their definition: signed, 0 and 2ᵉ·(1 + f/8) for e = −16…−1 (f ≥ 2
    at e = −16) and 1, in code order; unsigned, 2ᵉ·(1 + f/8) for e = −32…−1 (f ≥ 2 at
    e = −32) and 1, code + 127 order."""
    low, first = (-16, 2) if signed else (-32, 2)
    grid = [2.0**e * (1 + f / 8) for e in range(low, 0) for f in range(8)]
    values = [0.0] * signed + grid[first:] + [1.0]
    return np.array(values, np.float32)


def _numpy_codes(y, signed):
    """The code of each |y| ≤ 1 (a float32 array): the nearest map value, a tie going to
    the larger; a signed |y| below 1.1875·2⁻¹⁶ (halfway to the smallest nonzero value from
    the grid point below it) is 0."""
    values = _numpy_map(signed)
    magnitude = np.minimum(np.abs(y), np.float32(1))
    grid = values[1:] if signed else values
    midpoints = (grid[:-1].astype(np.float64) + grid[1:]) / 2
    index = np.searchsorted(midpoints, magnitude, side="right")
    if not signed:
        return (index - 127).astype(np.int8)
    index = np.where(magnitude < 1.1875 * 2.0**-16, 0, index + 1)
    return np.where(y < 0, -index, index).astype(np.int8)


def _numpy_decode(codes, signed):
    values = _numpy_map(signed)
    codes = np.asarray(codes, np.int64)
    if signed:
        return np.sign(codes) * values[np.abs(codes)]
    return values[codes + 127]


def _numpy_quantise(x, signed, absmax=None, block=256):
    """Blockwise over the flattened leaf (last block zero-padded): each block's absmax (or
    the ``absmax`` given) and its codes; the decoded values."""
    flat = np.asarray(x, np.float32).reshape(-1)
    padded = np.concatenate([flat, np.zeros(-flat.size % block, np.float32)]).reshape(-1, block)
    if absmax is None:
        absmax = np.abs(padded).max(axis=1)
    absmax = np.asarray(absmax, np.float32).reshape(-1)
    # times the reciprocal of the absmax, as the encode computes it
    normed = padded * (np.float32(1) / np.where(absmax > 0, absmax, np.float32(1)))[:, None]
    codes = _numpy_codes(normed, signed)
    decoded = (_numpy_decode(codes, signed) * absmax[:, None]).astype(np.float32)
    cut = lambda a: a.reshape(-1)[: flat.size].reshape(np.shape(x))
    return cut(codes), absmax, cut(decoded)


def test_int8_round_trip_is_the_numpy_quantiser_within_a_sixteenth():
    rng = np.random.default_rng(2)
    cases = [  # a last axis of whole blocks, a padded 1-D leaf, a padded 2-D leaf
        (rng.normal(size=(3, 512)) * np.logspace(-6, 0, 512), True),
        (rng.exponential(size=1000) * np.logspace(-12, 1, 1000), False),
        (rng.normal(size=(5, 300)) ** 2, False),
    ]
    for x, signed in cases:
        x = x.astype(np.float32)
        q = jax.jit(quantize, static_argnums=1)(jnp.asarray(x), signed)
        assert isinstance(q, gradx.SignedFloat8Moment if signed else gradx.UnsignedFloat8Moment)
        codes, absmax, decoded = _numpy_quantise(x, signed)
        np.testing.assert_array_equal(np.asarray(q.codes), codes)
        np.testing.assert_array_equal(np.asarray(q.absmax).reshape(-1), absmax)
        got = np.asarray(jax.jit(gradx.decode_moments)(q))
        np.testing.assert_allclose(got, decoded, rtol=1e-6, atol=0)
        # within 1/16 of itself, or below the map's floor (relative to the block's absmax)
        top = np.repeat(absmax, 256)[: x.size].reshape(x.shape)
        floor = 1.1875 * 2.0**-16 if signed else 1.25 * 2.0**-32
        assert np.all(np.abs(got - x) <= np.maximum(np.abs(x) / 16, floor * top) * (1 + 1e-6))
        assert q.codes.dtype == jnp.int8 and q.absmax.dtype == jnp.float32
        # each block's largest element is stored exactly, whatever its sign
        flat = np.abs(got).reshape(-1)
        flat = np.concatenate([flat, np.zeros(-flat.size % 256, np.float32)])
        np.testing.assert_array_equal(flat.reshape(-1, 256).max(axis=1), absmax)
        assert int(np.min(np.asarray(q.codes))) >= -127
    # init builds what quantising a constant gives, without quantising
    for fill, signed, shape in ((0.0, True, (5, 300)), (0.1, False, (5, 300)), (0.0, False, (512,))):
        full = quantized_full(jnp.zeros(shape, jnp.float32), fill, signed)
        want = quantize(jnp.full(shape, fill, jnp.float32), signed)
        for a, b in zip(full, want, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the absmax follows the leaf's shape where its last axis holds whole blocks
    assert quantize(jnp.ones((3, 512)), True).absmax.shape == (3, 2)
    assert quantize(jnp.ones((5, 300)), True).absmax.shape == (6,)


def test_int8_a_given_absmax_is_kept_and_clips_what_exceeds_it():
    # affine_absmax gives the absmax of the same numbers up to a fused multiply-add's last
    # bit: an element past it must be clipped to it, not wrapped or rounded past it
    rng = np.random.default_rng(4)
    x = rng.normal(size=600).astype(np.float32)
    absmax = (np.abs(np.concatenate([x, np.zeros(168, np.float32)])).reshape(3, 256).max(1))
    absmax = (absmax * np.float32([3.0, 1.0, 0.5])).astype(np.float32)  # loose, exact, short
    q = quantize(jnp.asarray(x), True, jnp.asarray(absmax))
    np.testing.assert_array_equal(np.asarray(q.absmax), absmax)
    codes, _, decoded = _numpy_quantise(x, True, absmax)
    np.testing.assert_array_equal(np.asarray(q.codes), codes)
    got = np.asarray(gradx.decode_moments(q))
    np.testing.assert_allclose(got, decoded, rtol=1e-6, atol=0)
    assert np.max(np.abs(got[512:])) == absmax[2]  # clipped to the absmax, never past it


def test_int8_blocks_near_float32s_largest_and_stacks_of_leaves_decode_right():
    # an absmax above 2^126 has a reciprocal that XLA flushes to 0: such a block must code
    # as the same block scaled by 2^-64 (exactly) does, not as all zeros
    rng = np.random.default_rng(5)
    for signed, x in ((True, rng.normal(size=512) * 1e37), (False, rng.uniform(size=512) * 3e38)):
        x = jnp.asarray(x, jnp.float32)
        big, small = quantize(x, signed), quantize(x * 2.0**-64, signed)
        np.testing.assert_array_equal(np.asarray(big.codes), np.asarray(small.codes))
        np.testing.assert_array_equal(np.asarray(big.absmax), np.asarray(small.absmax) * 2.0**64)
        error = np.abs(np.asarray(gradx.decode_moments(big)) - np.asarray(x))
        assert np.all(error <= np.maximum(np.abs(np.asarray(x)) / 16, 2e-5 * float(big.absmax.max())))
    # a stack of leaves (a sweep's states, jax.vmap(opt.init)) in the 1-D layout (300 is no
    # multiple of 256): each leaf decodes with its own blocks' absmax
    x = jnp.asarray(rng.normal(size=(3, 4, 300)) * np.array([1e-3, 1.0, 1e3])[:, None, None])
    x = x.astype(jnp.float32)
    stacked = jax.vmap(lambda v: quantize(v, True))(x)
    assert stacked.absmax.shape == (3, 5)
    decoded = np.asarray(gradx.decode_moments(stacked))
    for k in range(3):
        one = quantize(x[k], True)
        np.testing.assert_array_equal(decoded[k], np.asarray(gradx.decode_moments(one)))


def test_stochastic_rounding_draws_its_own_bits_per_group_and_per_part():
    # param groups (and Muon's matrices and other params) run one block on several parts of
    # the params: leaf i of each part must not round with leaf i of another's bits
    v = jnp.full((4096,), 1.0 + 2.0**-9, jnp.float32)
    sr = dict(state_dtype="bfloat16", stochastic_rounding=True)

    def moments(opt, params):
        state = opt.init(params)
        _, state = opt.update(params, state, params)
        return [x for x in jax.tree.leaves(gradx.decode_moments(state)) if x.shape == v.shape]

    grouped = moments(gradx.param_groups(gradx.sgd(0.1, 0.9, **sr), gx=r"^x$"), {"x": v, "y": v})
    muon = moments(gradx.muon(0.1, **sr), {"w": v.reshape(64, 64), "b": v})
    for a, b in (grouped, [muon[0].reshape(-1), muon[1]]):
        assert not np.array_equal(np.asarray(a), np.asarray(b))
    for m in grouped:  # the trace is g = 1 + 2^-9, a quarter of bfloat16's gap: up 1 in 4
        assert 0.2 < float(np.mean(np.asarray(m) > 1.0)) < 0.3


def test_int8_maps_computed_from_bits_are_their_definition_and_unsigned_has_no_zero():
    signed, unsigned = map_values(True), map_values(False)
    np.testing.assert_array_equal(signed, _numpy_map(True))
    np.testing.assert_array_equal(unsigned, _numpy_map(False))
    codes = jnp.arange(-127, 128, dtype=jnp.int32).astype(jnp.int8)
    np.testing.assert_array_equal(decode(codes, True), _numpy_decode(np.asarray(codes), True))
    codes = jnp.arange(-127, 128, dtype=jnp.int32).astype(jnp.int8)
    np.testing.assert_array_equal(decode(codes, False), unsigned)
    assert signed[0] == 0 and signed[-1] == 1 and np.all(np.diff(signed) > 0)
    assert unsigned[0] == np.float32(1.25 * 2.0**-32) and unsigned[-1] == 1
    assert np.all(np.diff(unsigned) > 0)
    # zeros in a nonzero block read back as the floor, a zero block as zeros (quantise and init)
    x = jnp.zeros(512, jnp.float32).at[0].set(2.0)
    np.testing.assert_array_equal(gradx.decode_moments(quantize(x, False))[1:256], 2 * unsigned[0])
    np.testing.assert_array_equal(gradx.decode_moments(quantize(x, False))[256:], 0)
    np.testing.assert_array_equal(gradx.decode_moments(quantized_full(x, 0.0, False)), 0)


def _numpy_int8_adam(grads, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Adam (float32) on one block of 256 whose moments are stored between steps with the
    int8 maps and the block's absmax, and read back as stored for the update: each step's
    update and the last stored absmax of m and v."""
    f = np.float32
    m = v = np.zeros(256, f)
    out = []
    for t, g in enumerate(grads, 1):
        _, m_top, m = _numpy_quantise(f(b1) * m + (1 - f(b1)) * g, True)
        _, v_top, v = _numpy_quantise(f(b2) * v + (1 - f(b2)) * g * g, False)
        m_hat, v_hat = m / (1 - f(b1) ** t), v / (1 - f(b2) ** t)
        out.append(-f(lr) * m_hat / (np.sqrt(v_hat) + f(eps)))
    return out, (m_top, v_top)


def test_int8_adam_is_the_numpy_transcription_read_as_stored():
    rng = np.random.default_rng(6)
    grads = [(rng.normal(size=256) * np.logspace(-5, 0, 256)).astype(np.float32) for _ in range(4)]
    params = {"w": jnp.zeros(256, jnp.float32)}
    opt = gradx.adam(1e-3, state_dtype="int8")
    update, state = jax.jit(opt.update), opt.init(params)
    want, (m_top, v_top) = _numpy_int8_adam(grads, 1e-3)
    for g, w in zip(grads, want, strict=True):
        u, state = update({"w": jnp.asarray(g)}, state, params)
        np.testing.assert_allclose(np.asarray(u["w"]), w, rtol=1e-4, atol=0)
    inner = state.inner_state[0]
    m, v = inner.direction.mean["w"], inner.by.nu["w"]
    # the absmax taken from the update's form (old codes and g) is the new moment's
    np.testing.assert_allclose(np.asarray(m.absmax), m_top, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(v.absmax), v_top, rtol=1e-6)
    assert float(m.absmax[0]) == float(np.max(np.abs(gradx.decode_moments(m))))
    assert float(v.absmax[0]) == float(np.max(gradx.decode_moments(v)))


def test_int8_slow_averages_do_not_drift():
    """A slow average stored to the nearest value of a coarse grid can settle in a spurious
    cycle: a format whose blocks took a bound above the absmax (so that not even the largest
    element was stored exactly) made SGD with momentum 0.99, under gradients +1, -1, ... on
    one coordinate, step -1.97, -0.93 for ever (float32: -0.50, +0.50), and bitsandbytes'
    signed map, which has 1 but not -1, -0.63, +0.37 for a negative largest element. With the
    exact absmax, a block's largest element is stored exactly whatever its sign, and int8
    steps as float32 does; Lion's m (β₂ = 0.99) keeps float32's sign."""

    def last_steps(opt, sign, steps=1000):
        params = {"w": jnp.zeros(256, jnp.float32)}
        update, state = jax.jit(opt.update), opt.init(params)
        out = []
        for t in range(steps):
            g = np.zeros(256, np.float32)
            g[0] = sign * (-1.0) ** t
            u, state = update({"w": jnp.asarray(g)}, state, params)
            out.append(float(u["w"][0]))
        return np.array(out[-4:]), state

    for sign in (1.0, -1.0):
        want, _ = last_steps(gradx.sgd(1.0, 0.99), sign)
        np.testing.assert_allclose(want, sign * np.array([-0.5025, 0.5025] * 2), atol=1e-3)
        got, _ = last_steps(gradx.sgd(1.0, 0.99, state_dtype="int8"), sign)
        np.testing.assert_allclose(got, want, rtol=1e-5)
        # Lion: the update is sign(β₁·m + (1 − β₁)·g) with m the slow average; a wrong m
        # shows in the next step's sign only when it has the wrong sign, so compare m itself
        _, s32 = last_steps(gradx.lion(1.0), sign)
        _, s8 = last_steps(gradx.lion(1.0, state_dtype="int8"), sign)
        m32 = [x for x in jax.tree.leaves(gradx.decode_moments(s32)) if np.shape(x) == (256,)]
        m8 = [x for x in jax.tree.leaves(gradx.decode_moments(s8)) if np.shape(x) == (256,)]
        np.testing.assert_allclose(np.asarray(m8[0])[0], np.asarray(m32[0])[0], rtol=1e-5)


def test_int8_second_moment_below_its_block_never_decodes_to_zero():
    """The zero-point problem (Li et al. 2023): with bitsandbytes' unsigned map, v = 1e-8 of
    its block's absmax was stored as 0 while m (10⁻⁴ of its block's) was not, and the next
    step with a zero gradient there was lr·m̂/ε ≈ 4,700·lr. gradx's unsigned map has no 0:
    v = 10⁻⁸ of the absmax is stored within 1/16, and even 10⁻¹⁴ (below the map) is read as
    its floor, an overestimate: a smaller step, never a larger one."""
    lr = 1e-3
    for small in (1e-4, 1e-7):
        g1 = np.full(256, small, np.float32)
        g1[0] = 1
        g2 = np.zeros(256, np.float32)
        g2[0] = 1
        params = {"w": jnp.zeros(256, jnp.float32)}
        steps = {}
        for name in ("float32", "int8"):
            opt = gradx.adam(lr, state_dtype=name)
            update = jax.jit(opt.update)
            _, state = update({"w": jnp.asarray(g1)}, opt.init(params), params)
            steps[name] = np.asarray(update({"w": jnp.asarray(g2)}, state, params)[0]["w"])
        assert isinstance(state.inner_state[0].by.nu["w"], gradx.UnsignedFloat8Moment)
        u32, u8 = steps["float32"], steps["int8"]
        assert 0.5 * lr < -u32[1] < 0.7 * lr  # float32 Adam: 0.67·lr (0.59·lr: ε) there
        assert np.all(np.abs(u8) <= 1.5 * lr), u8[:3]
        np.testing.assert_allclose(u8[0], u32[0], rtol=1e-3)
        want = _numpy_int8_adam([g1, g2], lr)[0][1]
        np.testing.assert_allclose(u8, want, rtol=1e-5)
        if small == 1e-4:  # both moments within the maps: float32's step within 1/10
            np.testing.assert_allclose(u8, u32, rtol=0.1)


def test_int8_adam_stays_close_to_float32_adam():
    rng = np.random.default_rng(3)
    a = jnp.asarray(rng.normal(size=(32, 8)), jnp.float32)
    target = a @ jnp.asarray(rng.normal(size=(8, 256)), jnp.float32)
    p0 = {k: jnp.zeros(s, jnp.float32) for k, s in (("w", (8, 256)), ("b", 256), ("c", 3))}

    def loss(p):
        return jnp.mean((a @ p["w"] + p["b"][None, :] - target) ** 2) + jnp.sum((p["c"] - 1) ** 2)

    def run(state_dtype):
        opt = gradx.adam(0.05, state_dtype=state_dtype)

        def step(carry, _):
            p, s = carry
            value, g = jax.value_and_grad(loss)(p)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), value

        (p, s), values = jax.lax.scan(step, (p0, opt.init(p0)), None, length=50)
        return p, s, values

    p32, _, l32 = run(None)
    p8, s8, l8 = run("int8")
    moved = np.max(np.abs(np.asarray(p32["w"])))
    # each moment within 1/16: the paths part a little (11% of the largest weight here), to
    # a loss as low (0.114 against float32's 0.124)
    assert np.max(np.abs(np.asarray(p8["w"] - p32["w"]))) < 0.15 * moved
    assert abs(float(l8[-1]) - float(l32[-1])) < 0.12 * float(l32[-1])
    assert float(l8[-1]) < 0.05 * float(l8[0])
    nu = s8.inner_state[0].by.nu
    assert isinstance(nu["w"], gradx.UnsignedFloat8Moment) and nu["c"].dtype == jnp.float32


def test_state_bytes_per_parameter():
    shapes = {"w1": (1000, 1000), "b1": (1000,), "w2": (1000, 3), "b2": (3,)}
    params = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}
    n = sum(int(np.prod(s)) for s in shapes.values())

    def per_param(**kw):
        state = jax.eval_shape(gradx.adam(1e-3, **kw).init, params)
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state)) / n

    assert 7.99 < per_param() < 8.01
    assert 2.0 < per_param(state_dtype="int8") <= 2.1
    assert per_param(state_dtype="bfloat16") <= 4.05
    assert per_param(state_dtype="bfloat16", stochastic_rounding=True) <= 4.05
    assert per_param(state_dtype=jnp.int8) == per_param(state_dtype="int8")


# ------------------------------------------------------------ bad values


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: gradx.adam(0.1, state_dtype="int9"), TypeError,
         r"^adam: state_dtype must be None, a real floating dtype .* or 'int8', got 'int9'"),
        # an array carries a dtype but is not one (it was read as float32)
        (lambda: gradx.adam(0.1, state_dtype=jnp.zeros(3)), TypeError,
         r"^adam: state_dtype must be None, a real floating dtype .* got Array\(\[0"),
        (lambda: gradx.adam(0.1, mu_dtype=np.zeros(2, np.float32)), TypeError,
         r"^adam: mu_dtype must be a real floating dtype .* got array\(\[0"),
        (lambda: gradx.lion(0.1, state_dtype=jnp.int32), TypeError,
         r"^lion: state_dtype must be None, a real floating dtype"),
        (lambda: gradx.adam(0.1, state_dtype="int8", stochastic_rounding=True), ValueError,
         r"^adam: stochastic_rounding=True rounds float32 moments to bfloat16; int8 .* must "
         r"be False with state_dtype='int8'"),
        (lambda: gradx.rmsprop(0.1, stochastic_rounding=True), ValueError,
         r"^rmsprop: stochastic_rounding=True rounds moments to bfloat16, so it needs "
         r"state_dtype='bfloat16', got state_dtype=None"),
        (lambda: gradx.adagrad(0.1, state_dtype="float32", stochastic_rounding=True),
         ValueError, r"^adagrad: .* needs state_dtype='bfloat16', got state_dtype='float32'"),
        (lambda: gradx.adam(0.1, state_dtype="bfloat16", stochastic_rounding=1), TypeError,
         r"^adam: stochastic_rounding must be a bool, got 1"),
        (lambda: gradx.sgd(0.1, state_dtype="int8"), ValueError,
         r"^sgd: state_dtype='int8' sets the momentum buffer's dtype, but momentum=None"),
        (lambda: gradx.compat.torch.Adam(state_dtype="int4"), TypeError,
         r"^Adam: state_dtype must be"),
        (lambda: gradx.compat.keras.Nadam(state_dtype="float16", stochastic_rounding=True),
         ValueError, r"^Nadam: stochastic_rounding=True"),
        (lambda: gradx.compat.optax.adamw(0.1, state_dtype="q8"), TypeError,
         r"^adamw: state_dtype must be"),
        (lambda: gradx.lookahead_momentum(0.1, state_dtype="uint8"), TypeError,
         r"^lookahead_momentum: state_dtype must be"),
        (lambda: gradx.adam(0.1, state_dtype="int8").init({"z": jnp.ones(300, jnp.complex64)}),
         TypeError, r"^rms: state_dtype='int8' needs real params .* complex64 leaf"),
        (lambda: gradx.adam(0.1, state_dtype="bfloat16").init({"z": jnp.ones(3, jnp.complex64)}),
         TypeError, r"^ema: state_dtype must be float32 or float64 for complex params"),
        # v̂ − â² from two 8-bit moments is rounding noise: refused, whatever the front end
        (lambda: gradx.rmsprop(0.1, centered=True, state_dtype="int8"), ValueError,
         r"^rms \(RMSProp's denominator\): centered=True .* got state_dtype='int8'"),
        (lambda: gradx.compat.torch.RMSprop(centered=True, state_dtype="int8"), ValueError,
         r"^rms \(RMSProp's denominator\): centered=True"),
        (lambda: gradx.compat.keras.RMSprop(centered=True, state_dtype="int8"), ValueError,
         r"^rms \(RMSProp's denominator\): centered=True"),
    ],
)  # fmt: skip
def test_a_bad_state_dtype_is_refused_by_name(make, error, message):
    with pytest.raises(error, match=message):
        make()


# ------------------------------------------------------------ every optimizer with moments

# name -> (a builder taking the policy's keywords, the params' shapes). Abstract (eval_shape):
# only the state's structure and dtypes are checked here, the numbers in the tests above.
_MATRIX = {"w": (4, 300), "b": (3,)}
WITH_MOMENTS = {
    "adam": (lambda **kw: gradx.adam(0.1, **kw), _MATRIX),
    "lion": (lambda **kw: gradx.lion(0.1, **kw), _MATRIX),
    "lamb": (lambda **kw: gradx.lamb(0.1, **kw), _MATRIX),
    "radam": (lambda **kw: gradx.radam(0.1, **kw), _MATRIX),
    "adopt": (lambda **kw: gradx.adopt(0.1, **kw), _MATRIX),
    "adafactor": (lambda **kw: gradx.adafactor(0.1, factored=False, **kw), _MATRIX),
    "adafactor(factored)": (lambda **kw: gradx.adafactor(0.1, **kw), {"w": (300, 260)}),
    "muon": (lambda **kw: gradx.muon(0.1, **kw), {"w": (300, 260), "b": (300,)}),
    "torch.Adafactor": (lambda **kw: gradx.compat.torch.Adafactor(**kw), _MATRIX),
    "torch.Muon": (lambda **kw: gradx.compat.torch.Muon(**kw), {"w": (300, 260)}),
    "torch.RAdam": (lambda **kw: gradx.compat.torch.RAdam(**kw), _MATRIX),
    "keras.Adafactor": (lambda **kw: gradx.compat.keras.Adafactor(**kw), _MATRIX),
    "keras.Lion": (lambda **kw: gradx.compat.keras.Lion(**kw), _MATRIX),
    "keras.Lamb": (lambda **kw: gradx.compat.keras.Lamb(**kw), _MATRIX),
}


@pytest.mark.parametrize("name", sorted(WITH_MOMENTS))
def test_every_optimizer_with_moments_stores_them_as_state_dtype_says(name):
    make, shapes = WITH_MOMENTS[name]
    params = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}
    for kw, kinds in (
        (dict(state_dtype="int8"), {gradx.SignedFloat8Moment, gradx.UnsignedFloat8Moment}),
        (dict(state_dtype="bfloat16", stochastic_rounding=True), {gradx.RoundedMoment}),
    ):
        opt = make(**kw)
        state = jax.eval_shape(opt.init, params)
        _, after = jax.eval_shape(opt.update, params, state, params)
        found = _stored_kinds(after)
        assert found and found <= kinds, (name, kw, found)
        assert jax.tree.structure(after) == jax.tree.structure(state), (name, kw)
    state = jax.eval_shape(make(state_dtype="bfloat16").init, params)
    assert any(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state)), name


# ------------------------------------------------------------ the machinery around a state


POLICIES = {
    "float32": dict(state_dtype="float32"),
    "bfloat16_sr": dict(state_dtype="bfloat16", stochastic_rounding=True),
    "int8": dict(state_dtype="int8"),
}


def test_every_state_dtype_with_hyperparams_vmap_pickle_orbax_and_effective_lr(tmp_path):
    import orbax.checkpoint as ocp

    params = {"w": jnp.linspace(-1.0, 1.0, 512, dtype=jnp.float32).reshape(2, 256)}
    params["b"] = jnp.ones(3, jnp.float32)
    grads = jax.tree.map(lambda p: jnp.cos(3 * p), params)
    states, updates = {}, {}
    for name, kw in POLICIES.items():
        opt = gradx.adam(0.1, **kw)
        update = jax.jit(opt.update)
        first = opt.init(params)
        u1, state = update(grads, first, params)
        # step 1: α_ef = γ/(√v̂ + ε), read from the stored (decoded) v; the step itself used
        # v as stored (float32, rounded) or before it was stored (int8): −α_ef·g within the
        # storage's rounding
        alpha = gradx.effective_learning_rate(opt, state, params, grads)
        nu = gradx.decode_moments(state.inner_state[0].by.nu)["w"].astype(jnp.float32)
        b2 = np.float32(0.999)
        want = np.float32(0.1) / (np.sqrt(nu / (np.float32(1) - b2)) + np.float32(1e-8))
        np.testing.assert_allclose(alpha["w"], want, rtol=1e-6, err_msg=name)
        rtol = {"float32": 1e-6, "bfloat16_sr": 1e-2, "int8": 0.1}[name]
        np.testing.assert_allclose(u1["w"], -alpha["w"] * grads["w"], rtol=rtol, err_msg=name)
        # a new learning rate is data: no retrace
        compiled = update._cache_size()
        state = gradx.set_hyperparams(state, learning_rate=0.05)
        _, state = update(grads, state, params)
        assert update._cache_size() == compiled, name
        # vmap over two learning rates equals the two runs
        lrs = jnp.asarray([0.05, 0.2], jnp.float32)
        batch = jax.vmap(lambda lr, s=state: gradx.set_hyperparams(s, learning_rate=lr))(lrs)
        vu, _ = jax.vmap(update, in_axes=(None, 0, None))(grads, batch, params)
        single, _ = update(grads, gradx.set_hyperparams(state, learning_rate=0.2), params)
        np.testing.assert_allclose(vu["w"][1], single["w"], rtol=1e-6, err_msg=name)
        # pickle: the same state, and the same next step
        states[name], updates[name] = state, update(grads, state, params)
        back = pickle.loads(pickle.dumps(state))
        assert jax.tree.structure(back) == jax.tree.structure(state)
        resumed = update(grads, back, params)
        for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(updates[name]), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert _stored_kinds(states["bfloat16_sr"]) == {gradx.RoundedMoment}
    assert _stored_kinds(states["int8"]) == {gradx.SignedFloat8Moment, gradx.UnsignedFloat8Moment}

    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "states", states)
    with ocp.StandardCheckpointer() as checkpointer:
        restored = checkpointer.restore(tmp_path / "states", states)  # a target: the classes
    with ocp.StandardCheckpointer() as checkpointer:
        raw = checkpointer.restore(tmp_path / "states")  # no target: dicts, sorted fields
    unflat = jax.tree.unflatten(jax.tree.structure(states), jax.tree.leaves(raw))
    for back in (restored, unflat):
        assert jax.tree.structure(back) == jax.tree.structure(states)
        for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(states), strict=True):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for name, kw in POLICIES.items():  # exact resume: the restored state takes the same step
        again = jax.jit(gradx.adam(0.1, **kw).update)(grads, restored[name], params)
        for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(updates[name]), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class _Interrupt(Exception):
    pass


def _interrupt_at_epoch_1(epoch, logs, params, opt_state):
    if epoch == 1:
        raise _Interrupt


def test_fit_with_int8_and_stochastic_rounding_packed_and_not(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    data = {"x": x, "y": np.tanh(x @ rng.normal(size=(4, 300))).astype(np.float32)}
    params = {k: jnp.zeros(s, jnp.float32) for k, s in (("w", (4, 300)), ("b", 300), ("c", 2))}

    def loss_fn(p, batch):
        fit = batch["x"] @ p["w"] + p["b"][None, :]
        return jnp.mean((fit - batch["y"]) ** 2) + jnp.sum(p["c"] ** 2)

    kw = dict(batch_size=8, epochs=3, key=jax.random.key(0), progress=False)
    int8 = gradx.adam(0.05, state_dtype="int8")
    plain = gradx.fit(loss_fn, params, int8, data, **kw)  # leaf by leaf: blocks per leaf
    packed = gradx.fit(loss_fn, params, gradx.flat(int8), data, **kw)  # blocks of buffers
    rounded = gradx.adam(0.05, state_dtype="bfloat16", stochastic_rounding=True)
    packed_sr = gradx.fit(loss_fn, params, rounded, data, flat=True, **kw)  # fit's packing
    for result in (plain, packed, packed_sr):
        losses = np.asarray(result.history["loss"])
        assert np.all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0], losses
    assert _stored_kinds(plain.opt_state) == {gradx.SignedFloat8Moment, gradx.UnsignedFloat8Moment}
    assert isinstance(packed.opt_state, gradx.FlatState)
    nu = packed_sr.opt_state.inner_state[0].by.nu  # the optimizer's own layout, not buffers
    assert isinstance(nu, gradx.RoundedMoment) and nu.values["w"].shape == (4, 300)
    with pytest.raises(ValueError, match="fit: flat=True"):
        gradx.fit(loss_fn, params, int8, data, flat=True, **kw)
    # interrupted and resumed from its checkpoint: the same rounding draws, the same run
    run = dict(flat=True, checkpoint_dir=tmp_path, **kw)
    with pytest.raises(_Interrupt):
        gradx.fit(loss_fn, params, rounded, data, callbacks=[_interrupt_at_epoch_1], **run)
    resumed = gradx.fit(loss_fn, params, rounded, data, resume=True, **run)
    np.testing.assert_array_equal(resumed.history["loss"], packed_sr.history["loss"])
    for a, b in zip(*map(jax.tree.leaves, (resumed.opt_state, packed_sr.opt_state)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


MALLOC_PROBE = """
import hashlib, resource, jax, jax.numpy as jnp, numpy as np, gradx
opt = gradx.amsgrad(1e-3, state_dtype="int8")  # its running maximum: quantised by absmax
params = jnp.full(1 << 23, 0.5, jnp.float32)  # 32 MiB: its new float32 maximum is a fresh mmap
grads = jnp.asarray(np.random.default_rng(0).normal(size=params.shape), jnp.float32)
def step(params, state, grads):  # grads an argument: a closed-over one is folded at compile
    updates, state = opt.update(grads, state, params)
    return params + updates, state
step = jax.jit(step, donate_argnums=(0, 1))
state = opt.init(params)
for _ in range(3):  # compile and warm up
    params, state = step(params, state, grads)
jax.block_until_ready(params)
faults = []  # per step: an untrimmed heap may still grow in some steps, then faults none
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    params, state = step(params, state, grads)
    jax.block_until_ready(params)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
faults = min(faults)
leaves = [np.asarray(x).tobytes() for x in jax.tree.leaves((params, state))]
print(hashlib.sha256(b"".join(leaves)).hexdigest(), int(faults))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc settings are Linux's")
def test_the_malloc_settings_the_guide_gives_change_page_faults_not_numbers():
    """docs/guides/state-dtype.md tells Linux users to set glibc's malloc in the environment
    against the page faults of an int8 step whose moments are quantised by their absmax
    (AMSGrad's maximum): each setting gives the same params and state, bit for bit, and each
    a step with far fewer page faults than any step under glibc's defaults."""
    settings = {
        "defaults": {},
        "huge pages": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
        "one heap": {
            "MALLOC_ARENA_MAX": "1",
            "MALLOC_MMAP_MAX_": "0",
            "MALLOC_TRIM_THRESHOLD_": "17179869184",
        },
    }
    malloc = ("GLIBC_TUNABLES", "MALLOC_")
    base = {k: v for k, v in os.environ.items() if not k.startswith(malloc)}
    base["JAX_PLATFORMS"] = "cpu"
    results = {}
    for name, env in settings.items():
        out = subprocess.run(
            [sys.executable, "-c", MALLOC_PROBE],
            env={**base, **env},
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        digest, faults = out.stdout.split()
        results[name] = (digest, int(faults))
    assert len({digest for digest, _ in results.values()}) == 1, results
    # 32 MiB of a fresh float32 moment a step is 8,192 pages of 4 KiB, 16 huge pages of 2 MiB;
    # one untrimmed heap reuses its pages once it has grown
    assert results["defaults"][1] > 6_000, results
    assert results["one heap"][1] < results["defaults"][1] / 4, results
    thp = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp.exists() and "[never]" not in thp.read_text():  # else glibc gets no huge pages
        assert results["huge pages"][1] < results["defaults"][1] / 4, results


# every block that passes its update's form (affine=) to an int8 codec: the absmax it gets
# from it must be that of the new moment, or elements are clipped (a form too small) or
# stored coarser than they should be (too large), silently
AFFINE = {
    "adam": lambda: gradx.adam(0.1, state_dtype="int8"),
    "adamw": lambda: gradx.adamw(0.1, state_dtype="int8"),
    "nadam": lambda: gradx.nadam(0.1, state_dtype="int8"),
    "radam": lambda: gradx.radam(0.1, state_dtype="int8"),
    "amsgrad": lambda: gradx.amsgrad(0.1, state_dtype="int8"),
    "adamax": lambda: gradx.adamax(0.1, state_dtype="int8"),
    "rmsprop(momentum)": lambda: gradx.rmsprop(0.1, momentum=0.9, state_dtype="int8"),
    "adagrad": lambda: gradx.adagrad(0.1, state_dtype="int8"),
    "adadelta": lambda: gradx.adadelta(1.0, state_dtype="int8"),
    "lion": lambda: gradx.lion(0.1, state_dtype="int8"),
    "adopt": lambda: gradx.adopt(0.1, state_dtype="int8"),
    "sgd(nesterov)": lambda: gradx.sgd(0.1, 0.9, nesterov=True, state_dtype="int8"),
    "torch.SGD(dampening)": lambda: gradx.compat.torch.SGD(0.1, 0.9, 0.3, state_dtype="int8"),
    "torch.Adam(amsgrad)": lambda: gradx.compat.torch.Adam(amsgrad=True, state_dtype="int8"),
    "torch.NAdam": lambda: gradx.compat.torch.NAdam(state_dtype="int8"),
    "torch.RMSprop(momentum)": lambda: gradx.compat.torch.RMSprop(
        momentum=0.5, state_dtype="int8"
    ),
    "torch.Adagrad": lambda: gradx.compat.torch.Adagrad(
        initial_accumulator_value=0.1, state_dtype="int8"
    ),
    "torch.Adadelta": lambda: gradx.compat.torch.Adadelta(state_dtype="int8"),
    "torch.Muon": lambda: gradx.compat.torch.Muon(state_dtype="int8"),
    "keras.RMSprop(momentum)": lambda: gradx.compat.keras.RMSprop(
        momentum=0.5, state_dtype="int8"
    ),
    "keras.Nadam": lambda: gradx.compat.keras.Nadam(state_dtype="int8"),
    "keras.Lion": lambda: gradx.compat.keras.Lion(state_dtype="int8"),
}


def _absmaxes(state):
    quantized = (gradx.SignedFloat8Moment, gradx.UnsignedFloat8Moment)
    leaves = jax.tree.leaves(state, is_leaf=lambda n: isinstance(n, quantized))
    return [np.asarray(x.absmax) for x in leaves if isinstance(x, quantized)]


@pytest.mark.parametrize("name", sorted(AFFINE))
def test_int8_absmax_from_an_update_form_is_the_new_moments(name, monkeypatch):
    """Each step twice from the same state, compiled: as the optimizer runs, and with the
    form ignored (``affine_absmax`` replaced, so each block takes the absmax of its new
    moment as computed): the same absmax, up to the last bits of a fused multiply-add."""
    from gradx._protocol import storage

    rng = np.random.default_rng(7)
    # a last axis of whole blocks, and a leaf of 1-D blocks whose last one is padded
    shapes = {"w": (4, 256), "p": (3, 100)}
    params = {k: jnp.asarray(rng.normal(size=v), jnp.float32) for k, v in shapes.items()}
    grads0 = jax.tree.map(jnp.zeros_like, params)
    opt = AFFINE[name]()
    state = opt.init(params)
    # two functions, so that jit traces each (it caches traces by function): the first
    # counts the forms it is given, the second ignores them
    calls, real = [], storage.affine_absmax
    monkeypatch.setattr(storage, "affine_absmax", lambda *a: calls.append(1) or real(*a))
    with_form = jax.jit(lambda g, s, p: opt.update(g, s, p)).lower(grads0, state, params)
    assert calls, f"{name}: no block passed its update's form"
    monkeypatch.setattr(storage, "affine_absmax", lambda *args: None)
    without_form = jax.jit(lambda g, s, p: opt.update(g, s, p)).lower(grads0, state, params)
    with_form, without_form = with_form.compile(), without_form.compile()
    for step in range(5):  # signs and magnitudes that move: one step a spike, one all zero
        grads = {}
        for k, v in shapes.items():
            g = rng.normal(size=v) * np.logspace(-6, 0, int(np.prod(v))).reshape(v)
            g = g * (100.0 if step == 2 else 1.0) * (0.0 if step == 3 else 1.0)
            grads[k] = jnp.asarray(g, jnp.float32)
        updates, new = with_form(grads, state, params)
        _, exact = without_form(grads, state, params)
        got, want = _absmaxes(new), _absmaxes(exact)
        assert got, f"{name}: no int8 moment"
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-30, err_msg=name)
        state, params = new, optax.apply_updates(params, updates)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_int8_absmax_from_a_float64_form_does_not_overflow_in_float32():
    # x64: a float64 block computes g² = 9e38, which float32 cannot hold, and a new v of
    # (1 − β)·g², which it can: the absmax must be that, not inf
    params = {"w": jnp.zeros(256, jnp.float64)}
    g = np.ones(256)
    g[0] = 3e19
    for opt, rest in ((gradx.adam(1e-3, state_dtype="int8"), 1e-3), (gradx.rmsprop(1e-3, state_dtype="int8"), 0.1)):
        updates, state = jax.jit(opt.update)({"w": jnp.asarray(g)}, opt.init(params), params)
        v_top = max(float(a.max()) for a in _absmaxes(state))
        np.testing.assert_allclose(v_top, rest * 9e38, rtol=1e-6)
        assert np.all(np.isfinite(np.asarray(updates["w"])))
        assert float(updates["w"][0]) < 0


def test_int8_running_maximum_never_reads_back_lower():
    """AMSGrad's v_max re-quantised as its block's absmax grows: rounded to nearest, an
    unchanged element could read back up to half a grid step lower than before; rounded
    up, it never does."""
    opt = gradx.amsgrad(1e-3, state_dtype="int8")
    params = {"w": jnp.zeros(256, jnp.float32)}
    update, state = jax.jit(opt.update), opt.init(params)
    before = None
    for t in range(60):
        g = np.ones(256, np.float32)
        g[0] = 1.0 + 0.37 * t  # the block's largest grows every step
        _, state = update({"w": jnp.asarray(g)}, state, params)
        nu_max = state.inner_state[0].by.nu_max["w"]
        now = np.asarray(gradx.decode_moments(nu_max))
        if before is not None:
            assert np.all(now >= before), (t, np.min(now - before))
        before = now
