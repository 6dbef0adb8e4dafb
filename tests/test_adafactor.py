"""gradx.adafactor and its blocks (scale_by_factored_rms, clip_by_block_rms,
scale_by_param_block_rms): optax.adafactor live, a NumPy transcription of the paper, the gain
rules against NumPy, hyperparameters in the state, and gradx.flat's refusal."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from live_twin import F32

import gradx

STEPS = 40
F64 = dict(rtol=1e-12, atol=1e-14)
SHAPES = {"big": (128, 160), "m": (3, 4), "v": (5,), "s": ()}


def _params(dtype, shapes=SHAPES):
    rng = np.random.default_rng(1)
    return {k: jnp.asarray(rng.normal(size=s), dtype) for k, s in shapes.items()}


def _grads(dtype, steps=STEPS, shapes=SHAPES, seed=0):
    """Random gradients with exact zeros (a whole row of the big matrix at step 3) and a
    scalar whose sign flips every step; stacked: each leaf has a leading axis of steps."""
    rng = np.random.default_rng(seed)
    out = {n: [] for n in shapes}
    for k in range(steps):
        for n, s in shapes.items():
            g = rng.normal(size=s) * (rng.random(s) > 0.1) if s else np.asarray((-1.0) ** k * 0.5)
            if n == "big" and k == 3:
                g[7] = 0.0
            out[n].append(g)
    return {n: jnp.asarray(np.stack(v), dtype) for n, v in out.items()}


def _step(grads, k):
    return {n: g[k] for n, g in grads.items()}


def _trajectories(opts, dtype, steps=STEPS, shapes=SHAPES):
    """Each optimizer's params after every step (leaves stacked over steps) and final state,
    all in one jitted scan: one compilation for the lot."""
    p0 = _params(dtype, shapes)

    def run(grads):
        def body(carry, g):
            carry = [(p, s) for p, s in carry]
            new = []
            for opt, (p, s) in zip(opts, carry, strict=True):
                u, s = opt.update(g, s, p)
                new.append((optax.apply_updates(p, u), s))
            return new, [p for p, _ in new]

        final, params = jax.lax.scan(body, [(p0, opt.init(p0)) for opt in opts], grads)
        return params, [s for _, s in final]

    return jax.jit(run)(_grads(dtype, steps, shapes))


def _close(ours, theirs, tol):
    for name in ours:
        assert ours[name].dtype == theirs[name].dtype
        np.testing.assert_allclose(ours[name], theirs[name], **tol, err_msg=name)


MASK = {"big": True, "m": False, "v": True, "s": False}
CASES = {
    "defaults": dict(),
    "momentum_decay": dict(
        learning_rate=optax.linear_schedule(0.05, 0.01, 30),
        decay_rate=0.5,
        clipping_threshold=0.5,
        momentum=0.9,
        dtype_momentum=jnp.float64,
        weight_decay_rate=0.01,
        eps=1e-20,
        weight_decay_mask=MASK,
    ),
    "unscaled": dict(
        learning_rate=0.02,
        min_dim_size_to_factor=2,  # the 3×4 matrix is factored too
        multiply_by_parameter_scale=False,
        clipping_threshold=None,
    ),
}


def _decay_rate_f64(step, exponent):
    """optax's β̂ = 1 − (s + 1)^(−c), in float64 (optax's own computes it in float32)."""
    return 1.0 - jnp.asarray(step + 1, jnp.float64) ** (-exponent)


def _optax_blocks(learning_rate=None, decay_rate=0.8, clipping_threshold=1.0,
                  multiply_by_parameter_scale=True, momentum=None, dtype_momentum=jnp.float32,
                  weight_decay_rate=None, eps=1e-30, weight_decay_mask=None,
                  min_dim_size_to_factor=128):  # fmt: skip
    """optax.adafactor's own chain of optax's blocks, with a float64 β̂."""
    tx = [optax.scale_by_factored_rms(True, decay_rate, 0, min_dim_size_to_factor, eps,
                                      decay_rate_fn=_decay_rate_f64)]  # fmt: skip
    if clipping_threshold is not None:
        tx.append(optax.clip_by_block_rms(clipping_threshold))
    if learning_rate is not None:
        tx.append(optax.scale_by_learning_rate(learning_rate, flip_sign=False))
    if multiply_by_parameter_scale:
        tx.append(optax.scale_by_param_block_rms())
    if momentum is not None:
        tx.append(optax.ema(momentum, debias=False, accumulator_dtype=dtype_momentum))
    if weight_decay_rate is not None:
        tx.append(optax.add_decayed_weights(weight_decay_rate, mask=weight_decay_mask))
    return optax.chain(*tx, optax.scale(-1))


@pytest.mark.parametrize("name", CASES)
def test_trajectory_equals_optax_adafactor_float32_and_float64(name):
    kwargs = CASES[name]
    f32 = {**kwargs, "dtype_momentum": jnp.float32} if "dtype_momentum" in kwargs else kwargs
    with jax.numpy_dtype_promotion("standard"), jax.enable_x64(False):
        (ours, theirs), (state, their_state) = _trajectories(
            [gradx.adafactor(**f32), optax.adafactor(**f32)], jnp.float32
        )
    _close(ours, theirs, F32)
    # the statistics too, in optax's layout: v_row, v_col and v (with (1,) placeholders)
    block, their_block = state.inner_state[0], their_state[0]
    for field in ("v", "v_col", "v_row"):
        for a, b in zip(*(jax.tree.leaves(getattr(x, field)) for x in (block, their_block)),
                        strict=True):  # fmt: skip
            assert a.shape == b.shape and a.dtype == b.dtype
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-30)
    assert block.v_row["big"].shape == (128,) and block.v_col["big"].shape == (160,)
    # float64: optax's blocks chained as optax.adafactor does, with a float64 β̂ (optax's
    # own computes β̂ in float32 always; the defaults are also run against it)
    opts = [gradx.adafactor(**kwargs), _optax_blocks(**kwargs)]
    if name == "defaults":
        opts.append(optax.adafactor(**kwargs))
    with jax.numpy_dtype_promotion("standard"), jax.enable_x64(True):
        params, _ = _trajectories(opts, jnp.float64)
    _close(params[0], params[1], F64)
    if name == "defaults":  # to float32's rounding of β̂, relative to the leaf's scale
        for leaf, want in params[2].items():  # (γ = 1: θ grows 10⁴-fold in 40 steps)
            atol = 1e-6 * np.max(np.abs(want))
            np.testing.assert_allclose(params[0][leaf], want, rtol=1e-6, atol=atol, err_msg=leaf)


def test_bfloat16_updates_equal_optax_to_its_rounding():
    """optax computes a bfloat16 step in bfloat16 (a rounding per operation), gradx in float32
    with one rounding at the end: fed the same params and gradients at every step (optax's
    trajectory), the updates agree to a few bfloat16 ulps (2⁻⁸ each)."""
    kwargs = {**CASES["momentum_decay"], "dtype_momentum": jnp.float32}
    pairs = [
        (gradx.adafactor(), optax.adafactor()),
        (gradx.adafactor(**kwargs), optax.adafactor(**kwargs)),
    ]
    p0 = _params(jnp.bfloat16)

    def run(grads):
        def body(carry, g):
            out = []
            new = []
            for (ours, theirs), (p, s, t) in zip(pairs, carry, strict=True):
                u, s = ours.update(g, s, p)
                want, t = theirs.update(g, t, p)
                new.append((optax.apply_updates(p, want), s, t))
                out.append((u, want))
            return new, out

        init = [(p0, ours.init(p0), theirs.init(p0)) for ours, theirs in pairs]
        final, out = jax.lax.scan(body, init, grads)
        return out, final[0][1]

    with jax.numpy_dtype_promotion("standard"):
        out, state = jax.jit(run)(_grads(jnp.bfloat16))
    for u, want in out:
        for name in u:
            assert u[name].dtype == jnp.bfloat16
            a, b = (np.asarray(x[name], np.float32) for x in (u, want))
            rms = np.sqrt(np.mean(b**2, axis=tuple(range(1, b.ndim)), keepdims=True))
            assert np.all(np.abs(a - b) <= 0.03 * np.abs(b) + 0.03 * rms), name
    assert state.inner_state[0].v_row["big"].dtype == jnp.bfloat16


def test_decay_offset_lives_in_the_state():
    """After 5 steps, decay_offset = 3 through set_hyperparams (no retrace) continues as an
    optax.adafactor built with decay_offset=3 continuing from the same statistics."""
    params, grads = _params(jnp.float64, {"m": (3, 4)}), _grads(jnp.float64, 9, {"m": (3, 4)})
    grads = [_step(grads, k) for k in range(9)]
    ours, theirs = gradx.adafactor(0.1, 2), optax.adafactor(0.1, 2)
    s, t = ours.init(params), theirs.init(params)
    p, q, update = params, params, jax.jit(ours.update)
    with jax.numpy_dtype_promotion("standard"):
        for k, g in enumerate(grads):
            if k == 5:
                s = gradx.set_hyperparams(s, decay_offset=3)
                theirs = optax.adafactor(0.1, 2, decay_offset=3)
            u, s = update(g, s, p)
            v, t = theirs.update(g, t, q)
            p, q = optax.apply_updates(p, u), optax.apply_updates(q, v)
            np.testing.assert_allclose(p["m"], q["m"], rtol=1e-6, err_msg=f"step {k}")
    assert gradx.hyperparams(s)["decay_offset"].dtype == jnp.int32


# ----------------------------------------------------------------------------- the paper


def _paper_step(theta, g, state, t, lr, d=1.0, eps1=1e-30, eps2=1e-3, c=0.8):
    """One step of Shazeer & Stern's Algorithms 4 and 5 (sums, not means), with optax's
    relative step γ·max(ε₂, RMS(θ)); NumPy float64."""
    beta = 1 - t ** (-c)
    sq = g**2 + eps1
    if theta.ndim == 2:
        n, m = theta.shape
        state["R"] = beta * state.get("R", 0) + (1 - beta) * sq @ np.ones(m)  # row sums
        state["C"] = beta * state.get("C", 0) + (1 - beta) * np.ones(n) @ sq  # column sums
        v_hat = np.outer(state["R"], state["C"]) / (np.ones(n) @ state["R"])
    else:
        state["V"] = beta * state.get("V", 0) + (1 - beta) * sq
        v_hat = state["V"]
    u = g / np.sqrt(v_hat)
    u_hat = u / max(1.0, np.sqrt(np.mean(u**2)) / d)
    alpha = lr * max(eps2, np.sqrt(np.mean(theta**2)))
    return theta - alpha * u_hat


def test_equals_a_numpy_transcription_of_the_paper():
    shapes = {"m": (4, 3), "v": (5,)}
    params, grads = _params(jnp.float64, shapes), _grads(jnp.float64, 12, shapes)
    opt = gradx.adafactor(0.05, min_dim_size_to_factor=3, clipping_threshold=0.8)
    (got,), _ = _trajectories([opt], jnp.float64, 12, shapes)
    theta = {k: np.asarray(v) for k, v in params.items()}
    states = {k: {} for k in shapes}
    for t in range(1, 13):
        g = _step(grads, t - 1)
        theta = {k: _paper_step(theta[k], np.asarray(g[k]), states[k], t, 0.05, d=0.8)
                 for k in shapes}  # fmt: skip
        for k in shapes:
            np.testing.assert_allclose(got[k][t - 1], theta[k], rtol=1e-12, err_msg=f"{k} {t}")


# ----------------------------------------------------------------------------- gains


def _alpha_reference(h, state, params, g, d, lr):
    """α_ef = γ(1−β₁)·max(RMS θ, ε₂)/max(1, RMS(u)/d)/√V̂, u = g/√V̂ (NumPy, from the state)."""
    block = state.inner_state[0]
    out = {}
    for k, gk in g.items():
        gk = np.asarray(gk, np.float64)
        if gk.ndim == 2:  # factored over (d1, d0), d0 the larger axis: R lacks d0, C lacks d1
            r, c = np.asarray(block.v_row[k]), np.asarray(block.v_col[k])
            d0 = int(np.argsort(gk.shape)[-1])
            v_hat = np.outer(r / r.mean(), c) if d0 == 1 else np.outer(c, r / r.mean())
            inv = 1 / np.sqrt(v_hat)
        else:
            inv = 1 / np.sqrt(np.asarray(block.v[k]))
        u = gk * inv
        clip = 1 / max(1.0, np.sqrt(np.mean(u**2)) / d)
        scale = max(1e-3, np.sqrt(np.mean(np.asarray(params[k], np.float64) ** 2)))
        out[k] = lr * (1 - h.get("momentum", 0.0)) * scale * clip * inv
    return out


def test_effective_learning_rate_is_the_papers_factor():
    shapes = {"m": (4, 3), "v": (5,), "s": ()}
    for kwargs in (dict(clipping_threshold=0.3), dict(momentum=0.8, weight_decay_rate=0.1)):
        opt = gradx.adafactor(0.05, min_dim_size_to_factor=2, **kwargs)
        params = _params(jnp.float64, shapes)
        state = opt.init(params)
        alpha_fn = jax.jit(lambda s, p, g, opt=opt: gradx.effective_learning_rate(opt, s, p, g))
        update = jax.jit(opt.update)
        grads = _grads(jnp.float64, 4, shapes)
        for t in range(1, 5):
            g = _step(grads, t - 1)
            u, state = update(g, state, params)
            alpha = alpha_fn(state, params, g)
            h = {k: float(v) for k, v in gradx.hyperparams(state).items()}
            want = _alpha_reference(h, state, params, g, h.get("clipping_threshold", 1.0), 0.05)
            for k in shapes:
                np.testing.assert_allclose(alpha[k], want[k], rtol=1e-12, err_msg=f"{k} {t}")
            if t == 1:  # from zero statistics: −u = α_ef ⊙ g + λθ
                for k in shapes:
                    decay = h.get("weight_decay_rate", 0.0) * np.asarray(params[k])
                    np.testing.assert_allclose(-np.asarray(u[k]), alpha[k] * g[k] + decay,
                                               rtol=1e-12, atol=1e-15)  # fmt: skip
            params = optax.apply_updates(params, u)
    with pytest.raises(ValueError, match=r"clip_by_block_rms block's gain depends on the grad"):
        gradx.effective_learning_rate(opt, state, params)


# ----------------------------------------------------------------------------- the state


def test_set_hyperparams_does_not_retrace():
    """Every number changed after the first step runs the same jitted step, and gives the
    numbers of an optimizer built with the new values (which shares that step: its numbers
    come from its state)."""
    base = dict(min_dim_size_to_factor=2, momentum=0.5, weight_decay_rate=1e-3)
    changes = dict(learning_rate=0.02, decay_rate=0.6, clipping_threshold=0.5, eps=1e-20,
                   momentum=0.8, weight_decay_rate=1e-2, decay_offset=1)  # fmt: skip
    shapes = {"m": (4, 3), "v": (5,)}
    params, grads = _params(jnp.float32, shapes), _grads(jnp.float32, 6, shapes)
    opt, fresh = gradx.adafactor(0.05, **base), gradx.adafactor(**{**base, **changes})
    assert fresh.update is opt.update
    traces = []

    @jax.jit
    def step(p, s, g):
        traces.append(1)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    first, s1 = step(params, opt.init(params), _step(grads, 0))
    got, state = first, gradx.set_hyperparams(s1, **changes)
    # the same first step, then the statistics handed to the optimizer built with the changes
    want, other = first, fresh.init(params)._replace(count=s1.count, inner_state=s1.inner_state)
    for k in range(1, 6):
        got, state = step(got, state, _step(grads, k))
        want, other = step(want, other, _step(grads, k))
    assert len(traces) == 1
    assert {k: float(v) for k, v in gradx.hyperparams(state).items()} == pytest.approx(changes)
    for name in shapes:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_vmap_sweep_over_its_numbers_equals_separate_runs():
    shapes = {"m": (4, 3), "v": (5,)}
    params = _params(jnp.float32, shapes)
    grads = _grads(jnp.float32, 10, shapes)

    def make(**kw):
        base = {"learning_rate": 0.1, "min_dim_size_to_factor": 2, "momentum": 0.5}
        return gradx.adafactor(**{**base, **kw})

    opt = make()

    def run(state, opt=opt):
        def step(carry, g):
            p, s = carry
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(step, (params, state), grads)[0][0]

    grid = {"decay_rate": [0.5, 0.8, 1.0], "clipping_threshold": [0.1, 1.0, 2.0],
            "momentum": [0.0, 0.5, 0.9], "eps": [1e-30, 1e-3, 1e-1]}  # fmt: skip
    values = {k: jnp.asarray(v, jnp.float32) for k, v in grid.items()}
    states = jax.vmap(lambda v: gradx.set_hyperparams(opt.init(params), **v))(values)
    batched = jax.jit(jax.vmap(run))(states)
    for i in range(3):
        alone = make(**{k: v[i] for k, v in grid.items()})
        want = jax.jit(run, static_argnums=1)(alone.init(params), alone)
        for name in shapes:
            np.testing.assert_allclose(batched[name][i], want[name], rtol=1e-6, atol=1e-7)


def test_state_bytes_equal_optax_plus_the_hyperparameters():
    # A GPT-2-sized block: every matrix factored (m + n numbers), the vectors not.
    shapes = [(768, 768), (768,), (768, 3072), (3072, 768), (3072,), ()]
    params = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]

    def nbytes(tree):
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))

    for kwargs in ({}, {"learning_rate": 0.01, "momentum": 0.9, "weight_decay_rate": 0.1}):
        ours = jax.eval_shape(gradx.adafactor(**kwargs).init, params)
        theirs = jax.eval_shape(optax.adafactor(**kwargs).init, params)
        hyper = nbytes((ours.count, ours.hyperparams, ours.scheduled))
        assert nbytes(ours) - hyper == nbytes(theirs)
        assert hyper == 4 * (1 + 4 + len(kwargs))  # the count, and 4 bytes per number
    # per leaf: rows + columns + a (1,) placeholder for v, or v + two (1,) placeholders
    numbers = (768 + 768 + 1) + 2 * (768 + 3072 + 1) + (768 + 2) + (3072 + 2) + (1 + 2) + 1
    assert nbytes(ours.inner_state[0]) == 4 * numbers  # (+1: the block's count)


def test_rules_and_errors():
    for call, error, message in [
        (lambda: gradx.adafactor(eps=0.0), ValueError, r"^adafactor: eps must be > 0, got 0\.0"),
        (lambda: gradx.adafactor(clipping_threshold=0.0), ValueError,
         r"^adafactor: clipping_threshold must be > 0"),
        (lambda: gradx.adafactor(momentum=1.0), ValueError, r"^adafactor: momentum must be in"),
        (lambda: gradx.adafactor(decay_offset=1.5), ValueError,
         r"^adafactor: decay_offset must be an integer >= 0, got 1\.5"),
        (lambda: gradx.adafactor(min_dim_size_to_factor=-1), ValueError,
         r"^adafactor: min_dim_size_to_factor must be an integer >= 0, got -1"),
        (lambda: gradx.adafactor(min_dim_size_to_factor=jnp.int32(4)), TypeError,
         r"^adafactor: min_dim_size_to_factor must be an integer >= 0 \(it decides"),
        (lambda: gradx.adafactor(factored="yes"), TypeError, r"^adafactor: factored must be a bool"),
        (lambda: gradx.adafactor(dtype_momentum="int8"), TypeError,
         r"^adafactor: dtype_momentum must be a real floating dtype"),
        (lambda: gradx.scale_by_factored_rms(factor_axes="first"), ValueError,
         r"^scale_by_factored_rms: factor_axes must be one of \('largest', 'last'\)"),
    ]:  # fmt: skip
        with pytest.raises(error, match=message):
            call()
    opt = gradx.adafactor(0.1)
    state = opt.init({"w": jnp.ones((3, 4))})
    with pytest.raises(ValueError, match=r"^adafactor: update needs the params \("
                       r"multiply_by_parameter_scale scales each leaf's step by RMS\(θ\)\): "
                       r"call update\(grads, state, params\)$"):  # fmt: skip
        opt.update({"w": jnp.ones((3, 4))}, state)
    decays = gradx.adafactor(0.1, multiply_by_parameter_scale=False, weight_decay_rate=0.0)
    with pytest.raises(ValueError, match=r"^adafactor: update needs the params \("
                       r"weight_decay_rate subtracts λ·θ\)"):  # fmt: skip
        decays.update({"w": jnp.ones((3, 4))}, decays.init({"w": jnp.ones((3, 4))}))
    plain = gradx.adafactor(0.1, multiply_by_parameter_scale=False)  # reads no params
    u, _ = plain.update({"w": jnp.ones((3, 4))}, plain.init({"w": jnp.ones((3, 4))}))
    assert u["w"].shape == (3, 4)
    with pytest.raises(gradx.TreeMismatchError, match=r"gradient at \['w'\] has shape \(4, 3\)"):
        opt.update({"w": jnp.ones((4, 3))}, state, {"w": jnp.ones((4, 3))})


def test_the_largest_axes_are_factored_and_the_last_two_on_request():
    p = {"t": jnp.ones((2, 5, 3)), "v": jnp.ones(7), "empty": jnp.ones((0, 4))}
    largest = gradx.scale_by_factored_rms(min_dim_size_to_factor=3).init(p)
    assert (largest.v_row["t"].shape, largest.v_col["t"].shape) == ((2, 3), (2, 5))
    last = gradx.scale_by_factored_rms(min_dim_size_to_factor=2, factor_axes="last").init(p)
    assert (last.v_row["t"].shape, last.v_col["t"].shape) == ((2, 5), (2, 3))
    for state in (largest, last):
        assert state.v["v"].shape == (7,) and state.v_row["v"].shape == (1,)
        assert state.v["empty"].shape == (0, 4)  # an empty axis: never factored


# ----------------------------------------------------------------------------- gradx.flat


def test_flat_refuses_and_fit_runs_it_leaf_by_leaf():
    params = _params(jnp.float32, {"a": (4, 3), "b": (3,), "c": (2, 2)})
    for opt, block in [
        (gradx.adafactor(0.1, factored=True), "scale_by_factored_rms"),
        (gradx.adafactor(0.1, factored=False), "clip_by_block_rms"),
        (gradx.adafactor(0.1, factored=False, clipping_threshold=None), "scale_by_param_block_rms"),
    ]:
        with pytest.raises(
            ValueError, match=rf"^{block}: params must not be packed by gradx\.flat"
        ):
            gradx.flat(opt).init(params)
    # elementwise without the per-leaf blocks: runs packed, with the per-leaf numbers
    plain = gradx.adafactor(0.1, factored=False, clipping_threshold=None,
                            multiply_by_parameter_scale=False)  # fmt: skip
    g = jax.tree.map(lambda p: p * 0.5 + 0.1, params)
    want, _ = plain.update(g, plain.init(params), params)
    got, _ = gradx.flat(plain).update(g, gradx.flat(plain).init(params), params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want)

    def loss(p, batch):
        return sum(jnp.sum((x - jnp.mean(batch)) ** 2) for x in jax.tree.leaves(p))

    data = jnp.linspace(-1, 1, 8, dtype=jnp.float32)
    opt = gradx.adafactor(0.05, min_dim_size_to_factor=2)
    kw = dict(batch_size=4, epochs=1, progress=False, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"fit: flat=True cannot run this optimizer packed: scale"):
        gradx.fit(loss, params, opt, data, flat=True, **kw)
    result = gradx.fit(loss, params, opt, data, **kw)  # leaf by leaf
    block = result.opt_state.inner_state[0]
    assert (block.v_row["a"].shape, block.v_col["a"].shape) == ((3,), (4,))
