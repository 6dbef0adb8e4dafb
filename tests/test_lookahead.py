"""gradx.lookahead: fixed α against optax.lookahead, fitted α against the exact line minimiser."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference_lookahead as ref_lookahead
from jax.flatten_util import ravel_pytree

import gradx
from gradx._optimizers.lookahead import fit_alpha

import reference as ref

_rng = np.random.default_rng(7)
_Q = _rng.normal(size=(5, 5))
A = _Q @ _Q.T / 5 + np.eye(5)
B = _rng.normal(size=5)
PARAMS0 = {"b": np.array([0.5, -1.0, 1.5]), "w": np.array([1.0, -2.0])}
FLAT0 = np.asarray(ravel_pytree(PARAMS0)[0])


def quadratic(params):
    x, _ = ravel_pytree(params)
    return 0.5 * x @ jnp.asarray(A, x.dtype) @ x - jnp.asarray(B, x.dtype) @ x


def rosenbrock(p):
    return (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2


def tree_as(tree, dtype):
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


def adam_like(lr):
    """gradx.adam, or the bias-corrected EMA momentum while adam is not there yet."""
    if hasattr(gradx, "adam"):
        return gradx.adam(lr)
    return gradx.ema_momentum(lr, beta=0.9, bias_correction=True)


def _scan(opt, loss, params, steps, with_value=False):
    """``steps`` jitted updates; returns (params, state, losses)."""

    def body(carry, _):
        p, s = carry
        value, grads = jax.value_and_grad(loss)(p)
        extra = {"value": value} if with_value else {}
        u, s = opt.update(grads, s, p, **extra)
        return (optax.apply_updates(p, u), s), value

    (params, state), values = jax.jit(lambda p, s: jax.lax.scan(body, (p, s), None, length=steps))(
        params, opt.init(params)
    )
    return params, state, values


# ----------------------------------------------------------------------------- fixed α


INNERS = {
    "momentum": lambda: gradx.momentum(0.05, momentum=0.8),
    "adam": lambda: adam_like(0.05),
    "optax_adam": lambda: optax.adam(0.05),
}


@pytest.mark.parametrize(
    "inner, reset_state",
    [
        ("momentum", False),
        ("momentum", True),
        ("adam", False),
        ("adam", True),
        ("optax_adam", True),
    ],
)
def test_fixed_alpha_reproduces_optax_lookahead(inner, reset_state):
    make = INNERS[inner]
    ours = gradx.lookahead(make(), sync_period=4, alpha=0.3, reset_state=reset_state)
    theirs = optax.lookahead(make(), 4, 0.3, reset_state=reset_state)
    params = tree_as(PARAMS0, jnp.float64)
    pair = optax.LookaheadParams.init_synced(params)
    state, their_state = ours.init(params), theirs.init(pair)

    def ours_step(p, s):
        u, s = ours.update(jax.grad(quadratic)(p), s, p)
        return optax.apply_updates(p, u), s

    def their_step(pair, s):
        u, s = theirs.update(jax.grad(quadratic)(pair.fast), s, pair)
        return optax.apply_updates(pair, u), s

    promotion = "standard" if inner == "optax_adam" else "strict"
    with jax.numpy_dtype_promotion(promotion):
        ours_step, their_step = jax.jit(ours_step), jax.jit(their_step)
        for _ in range(14):
            params, state = ours_step(params, state)
            with jax.numpy_dtype_promotion("standard"):  # optax relies on implicit promotion
                pair, their_state = their_step(pair, their_state)
            np.testing.assert_allclose(
                ravel_pytree(params)[0], ravel_pytree(pair.fast)[0], rtol=1e-6, atol=1e-6
            )
    slow = state.inner_state.slow
    np.testing.assert_allclose(ravel_pytree(slow)[0], ravel_pytree(pair.slow)[0], atol=1e-6)


def test_fixed_alpha_matches_the_numpy_transcription():
    rule = ref_lookahead.lookahead(ref.momentum, sync_period=3, alpha=0.4)
    theta, st = FLAT0.copy(), {}
    params, state = tree_as(PARAMS0, jnp.float64), None
    opt = gradx.lookahead(gradx.momentum(0.05, momentum=0.8), sync_period=3, alpha=0.4)
    state = opt.init(params)
    step = jax.jit(
        lambda p, s: (lambda u, s: (optax.apply_updates(p, u), s))(
            *opt.update(jax.grad(quadratic)(p), s, p)
        )
    )
    for t in range(1, 13):
        params, state = step(params, state)
        theta, st = rule(theta, st, lambda x: A @ x - B, t, learning_rate=0.05, momentum=0.8)
        np.testing.assert_allclose(ravel_pytree(params)[0], theta, rtol=1e-12, atol=1e-12)


def test_set_hyperparams_refuses_the_fitted_alpha_an_output_of_each_sync():
    params = {"w": jnp.ones(2, jnp.float32)}
    for opt in (gradx.lookahead_fitted(0.1), gradx.lookahead(gradx.sgd(0.1), alpha="quadratic")):
        state = opt.init(params)
        with pytest.raises(
            ValueError,
            match=r"^set_hyperparams: alpha of lookahead_fitted .* is fitted at every sync "
            r"\(an output\), not a setting",
        ):
            gradx.set_hyperparams(state, alpha=0.3)
        state = gradx.set_hyperparams(state, alpha_min=0.1, alpha_max=1.5)  # settings
        assert float(gradx.hyperparams(state)["alpha_max"]) == 1.5
    # a fixed α is a setting
    state = gradx.lookahead(gradx.sgd(0.1), alpha=0.5).init(params)
    assert float(gradx.hyperparams(gradx.set_hyperparams(state, alpha=0.3))["alpha"]) == (
        pytest.approx(0.3)
    )


def test_params_stay_plain_and_hyperparameters_are_all_visible():
    opt = gradx.lookahead(gradx.momentum(0.1, momentum=0.5), sync_period=3, alpha=0.25)
    params = {"w": jnp.ones(2, jnp.float32)}
    state = opt.init(params)
    updates, state = opt.update({"w": jnp.ones(2, jnp.float32)}, state, params)
    assert set(updates) == {"w"}  # the user's own tree, no (fast, slow) wrapper
    hp = gradx.hyperparams(state)
    assert set(hp) == {"sync_period", "alpha", "learning_rate", "momentum"}
    assert hp["sync_period"].dtype == jnp.int32 and int(hp["sync_period"]) == 3
    assert float(hp["alpha"]) == 0.25 and float(hp["learning_rate"]) == pytest.approx(0.1)
    state = gradx.set_hyperparams(state, learning_rate=0.2, alpha=0.5, sync_period=2)
    hp = gradx.hyperparams(state)
    assert (float(hp["learning_rate"]), float(hp["alpha"]), int(hp["sync_period"])) == (
        pytest.approx(0.2),
        0.5,
        2,
    )
    # the new sync_period acts: with 1 step taken and k = 2, the next update syncs
    g = {"w": jnp.ones(2, jnp.float32)}
    p1 = optax.apply_updates(params, updates)
    updates, state = opt.update(g, state, p1)
    np.testing.assert_allclose(optax.apply_updates(p1, updates)["w"], state.inner_state.slow["w"])
    assert int(state.inner_state.phase) == 0


def test_reset_state_keeps_the_inner_hyperparameters():
    opt = gradx.lookahead(gradx.momentum(0.1, momentum=0.5), sync_period=2, reset_state=True)
    params = {"w": jnp.ones(2)}
    state = gradx.set_hyperparams(opt.init(params), learning_rate=0.01, momentum=0.9)
    for _ in range(4):
        updates, state = opt.update({"w": jnp.ones(2)}, state, params)
        params = optax.apply_updates(params, updates)
    hp = gradx.hyperparams(state)
    assert (float(hp["learning_rate"]), float(hp["momentum"])) == (0.01, 0.9)
    np.testing.assert_array_equal(state.inner_state.fast_state.inner_state[1].velocity["w"], 0)


# ----------------------------------------------------------------------------- fitted α


def _line_minimiser(start, finish):
    d = finish - start
    return -float((A @ start - B) @ d) / float(d @ A @ d)


@pytest.mark.parametrize(
    "make_inner, k",
    [(lambda: gradx.momentum(0.05, momentum=0.5), 3), (lambda: adam_like(0.1), 4)],
    ids=["momentum", "adam"],
)
def test_fitted_alpha_is_the_exact_line_minimiser_on_a_quadratic(make_inner, k):
    opt = gradx.lookahead(make_inner(), sync_period=k, alpha="quadratic")
    params = tree_as(PARAMS0, jnp.float64)
    state = opt.init(params)
    step = jax.jit(lambda p, s: opt.update(jax.grad(quadratic)(p), s, p, value=quadratic(p)))
    start, inside = FLAT0.copy(), 0
    for call in range(6 * (k + 1)):
        flat = np.asarray(ravel_pytree(params)[0])
        fast_state = state.inner_state.fast_state
        updates, state = step(params, state)
        params = optax.apply_updates(params, updates)
        if call % (k + 1) < k:  # an inner step
            assert int(state.inner_state.phase) == call % (k + 1) + 1
            continue
        # the sync-only call: params were the finish; no inner step was taken with ∇L(finish)
        before, after = jax.tree.leaves(fast_state), jax.tree.leaves(state.inner_state.fast_state)
        for a, b in zip(before, after, strict=True):
            np.testing.assert_array_equal(a, b)
        want = _line_minimiser(start, flat)
        alpha = float(gradx.hyperparams(state)["alpha"])
        np.testing.assert_allclose(alpha, np.clip(want, 0.0, 2.0), rtol=1e-8, atol=1e-10)
        inside += 0.0 < want < 2.0
        new = np.asarray(ravel_pytree(params)[0])
        np.testing.assert_allclose(new, start + alpha * (flat - start), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(ravel_pytree(state.inner_state.slow)[0], new, atol=1e-12)
        start = new
    assert inside >= 3  # the interesting case, not only clipped ones


def test_fitted_alpha_is_clipped_to_its_range():
    # plain GD with a tiny learning rate: the line minimiser is far beyond the finish
    for alpha_range, want in [((0.0, 2.0), 2.0), ((0.2, 0.7), 0.7)]:
        opt = gradx.lookahead(gradx.sgd(1e-3), 3, "quadratic", alpha_range=alpha_range)
        _, state, _ = _scan(opt, quadratic, tree_as(PARAMS0, jnp.float64), 4, True)
        hp = gradx.hyperparams(state)
        assert float(hp["alpha"]) == want
        assert (float(hp["alpha_min"]), float(hp["alpha_max"])) == alpha_range


@pytest.mark.parametrize(
    "l0, l1, slope, want",
    [
        (1.0, 0.5, -0.5, 1.0),  # a = 0: a straight line, the finish is lower: stay there
        (1.0, 0.5, -2.0, 1.0),  # a < 0: concave, finish lower: 1
        (1.0, 1.5, 0.0, 0.0),  # a < 0: concave, finish higher: back to the start
        (1.0, 1.0, 0.0, 1.0),  # everything equal (finish == start): degenerate, stay
        (1.0, 0.0, 0.0, 1.0),  # a = 1, b = -2: vertex at 1
        (1.0, 0.5, 0.5, 0.75),  # a = 1, b = -1.5: vertex at 0.75
        (1.0, 0.9, -0.1 + 1e-6, 2.0),  # a = 1e-6: nearly straight, going down: the range's end
        (0.0, 1e300, 1e308, 0.5 - 0.5e-8 / (1 - 1e-8)),  # 2a would overflow
        (0.0, -1e308, 1e308, 0.75),  # a = 2e308 would overflow
        (-1e308, 1e308, 0.0, 0.0),  # L(1) − L(0) would overflow; concave, finish higher
        (1.0, 0.5, float("nan"), 1.0),  # a NaN slope: the fallback
    ],
)
def test_fit_alpha_safeguards(l0, l1, slope, want):
    args = tuple(jnp.float64(x) for x in (l0, l1, slope, 0.0, 2.0))
    alpha = _FIT(*args)
    assert np.isfinite(alpha)
    np.testing.assert_allclose(alpha, want, rtol=1e-12, atol=1e-12)
    assert np.isnan(slope) or np.all(np.isfinite(_FIT_GRAD(*args)))


_FIT = jax.jit(fit_alpha)
_FIT_GRAD = jax.jit(jax.grad(fit_alpha, argnums=(0, 1, 2)))


def test_fitted_alpha_converges_on_rosenbrock_and_never_makes_nan():
    for inner in [gradx.momentum(1e-3, momentum=0.9), adam_like(1e-2)]:
        opt = gradx.lookahead(inner, 5, "quadratic")
        params, _, values = _scan(opt, rosenbrock, jnp.array([-1.2, 1.0]), 3000, True)
        assert np.all(np.isfinite(values))
        assert float(rosenbrock(params)) < 1e-3


def test_fitted_alpha_converges_on_a_noisy_minibatch_problem():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(256, 5)))
    w_true = rng.normal(size=5)
    y = x @ jnp.asarray(w_true) + 0.1 * jnp.asarray(rng.normal(size=256))
    full = lambda w: jnp.mean((x @ w - y) ** 2)
    opt = gradx.lookahead(gradx.momentum(0.02, momentum=0.9), 5, "quadratic")

    def body(carry, idx):
        w, s = carry
        value, grads = jax.value_and_grad(lambda w: jnp.mean((x[idx] @ w - y[idx]) ** 2))(w)
        u, s = opt.update(grads, s, w, value=value)
        return (optax.apply_updates(w, u), s), (value, s.inner_state.alpha)

    w0 = jnp.zeros(5)
    batches = jnp.asarray(np.stack([rng.permutation(256)[:8] for _ in range(500)]))
    (w, _), (values, alphas) = jax.jit(lambda w, s: jax.lax.scan(body, (w, s), batches))(
        w0, opt.init(w0)
    )
    assert np.all(np.isfinite(values)) and np.all((alphas >= 0) & (alphas <= 2))
    assert len(np.unique(np.asarray(alphas))) > 10  # it does fit, batch after batch
    assert float(full(w)) < 0.02  # noise floor 0.01, start 3.9


def test_fitted_alpha_needs_the_loss():
    opt = gradx.lookahead(gradx.sgd(0.1), alpha="quadratic")
    params = {"w": jnp.ones(2)}
    with pytest.raises(
        ValueError,
        match=r"lookahead: alpha='quadratic' needs the loss: "
        r"call update\(grads, state, params, value=loss\)",
    ):
        opt.update(params, opt.init(params), params)
    with pytest.raises(ValueError, match=r"lookahead: value must be the scalar loss"):
        opt.update(params, opt.init(params), params, value=jnp.ones(2))


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"alpha": 1.5}, r"lookahead: alpha must be in \[0, 1\], got 1\.5"),
        ({"alpha": -0.1}, r"lookahead: alpha must be in \[0, 1\], got -0\.1"),
        ({"sync_period": 0}, r"lookahead: sync_period must be an integer >= 1, got 0"),
        ({"sync_period": 2.5}, r"lookahead: sync_period must be an integer >= 1, got 2\.5"),
        (
            {"sync_period": 0, "alpha": "quadratic"},
            r"lookahead: sync_period must be an integer >= 1, got 0",
        ),
        ({"alpha": "cubic"}, r"lookahead: alpha must be in \[0, 1\] or 'quadratic', got 'cubic'"),
        (
            {"alpha": "quadratic", "alpha_range": (1.0, 0.5)},
            r"lookahead: alpha_range must be \(alpha_min, alpha_max\) with "
            r"0 <= alpha_min <= alpha_max, got \(1\.0, 0\.5\)",
        ),
        ({"alpha": "quadratic", "alpha_range": (-1.0, 1.0)}, r"alpha_range must be"),
        ({"alpha": "quadratic", "alpha_range": 2.0}, r"alpha_range must be"),
        # unused with a fixed alpha, but a bad range is still refused, not silently dropped
        (
            {"alpha": 0.5, "alpha_range": (1.0, 0.5)},
            r"lookahead: alpha_range must be \(alpha_min, alpha_max\) with "
            r"0 <= alpha_min <= alpha_max, got \(1\.0, 0\.5\)",
        ),
        ({"alpha": 0.5, "alpha_range": (-1.0, 1.0)}, r"alpha_range must be"),
        ({"alpha": 0.5, "alpha_range": 2.0}, r"alpha_range must be"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gradx.lookahead(gradx.sgd(0.1), **kwargs)


def test_structural_misuse_is_a_clear_error():
    with pytest.raises(
        TypeError, match=r"lookahead: inner must be an optax GradientTransformation"
    ):
        gradx.lookahead("adam")
    with pytest.raises(TypeError, match=r"lookahead: reset_state must be a bool, got 1"):
        gradx.lookahead(gradx.sgd(0.1), reset_state=1)
    opt = gradx.lookahead(gradx.sgd(0.1))
    state = opt.init({"w": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"lookahead: update needs the params"):
        opt.update({"w": jnp.ones(3)}, state)
    with pytest.raises(ValueError, match=r"(?s)lookahead: the gradient tree does not match.*init"):
        opt.update({"v": jnp.ones(3)}, state, {"w": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"set_hyperparams: alpha must be in \[0, 1\], got 2\.0"):
        gradx.set_hyperparams(state, alpha=2.0)


# ----------------------------------------------------------------------------- JAX contract


@pytest.mark.parametrize("alpha", [0.5, "quadratic"])
def test_no_retrace_when_hyperparameters_change(alpha):
    opt = gradx.lookahead(gradx.momentum(0.05, momentum=0.5), sync_period=2, alpha=alpha)
    traces = []

    @jax.jit
    def step(params, state):
        traces.append(1)
        value, grads = jax.value_and_grad(quadratic)(params)
        updates, state = opt.update(grads, state, params, value=value)
        return optax.apply_updates(params, updates), state

    params = tree_as(PARAMS0, jnp.float32)
    params, state = step(params, opt.init(params))
    changes = {"learning_rate": 0.01, "sync_period": 3}
    if alpha != "quadratic":
        changes["alpha"] = 0.8
    state = gradx.set_hyperparams(state, **changes)
    for _ in range(5):
        params, state = step(params, state)
    assert len(traces) == 1
    assert int(gradx.hyperparams(state)["sync_period"]) == 3


@pytest.mark.parametrize("alpha", [0.5, "quadratic"])
def test_vmap_over_learning_rates_equals_separate_runs(alpha):
    opt = gradx.lookahead(gradx.momentum(0.1, momentum=0.5), sync_period=3, alpha=alpha)
    params = tree_as(PARAMS0, jnp.float32)
    lrs = jnp.array([0.01, 0.05, 0.2], jnp.float32)

    def train(state):
        def body(carry, _):
            p, s = carry
            value, grads = jax.value_and_grad(quadratic)(p)
            u, s = opt.update(grads, s, p, value=value)
            return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(body, (params, state), None, length=11)[0]

    states = jax.vmap(lambda lr: gradx.set_hyperparams(opt.init(params), learning_rate=lr))(lrs)
    batched = jax.jit(jax.vmap(train))(states)
    for k, lr in enumerate(lrs):
        alone = gradx.lookahead(gradx.momentum(float(lr), momentum=0.5), 3, alpha)
        want = jax.jit(train)(alone.init(params))
        for got, w in zip(jax.tree.leaves(batched), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(got[k], w, rtol=1e-6, atol=1e-6)


def test_vmap_over_alpha_and_sync_period():
    opt = gradx.lookahead(gradx.momentum(0.05, momentum=0.5))
    params = tree_as(PARAMS0, jnp.float64)

    def final(alpha, k):
        state = gradx.set_hyperparams(opt.init(params), alpha=alpha, sync_period=k)
        return _run_scan(opt, state, params, 7)

    batched = jax.jit(jax.vmap(final))(jnp.array([0.2, 0.9]), jnp.array([2, 3], jnp.int32))
    for i, (alpha, k) in enumerate([(0.2, 2), (0.9, 3)]):
        alone = gradx.lookahead(gradx.momentum(0.05, momentum=0.5), k, alpha)
        want = jax.jit(_run_scan, static_argnums=(0, 3))(alone, alone.init(params), params, 7)
        for got, w in zip(jax.tree.leaves(batched), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(got[i], w, rtol=1e-12, atol=1e-12)


def _run_scan(opt, state, params, steps):
    def body(carry, _):
        p, s = carry
        value, grads = jax.value_and_grad(quadratic)(p)
        u, s = opt.update(grads, s, p, value=value)
        return (optax.apply_updates(p, u), s), None

    return jax.lax.scan(body, (params, state), None, length=steps)[0][0]


@pytest.mark.parametrize("alpha", [0.5, "quadratic"])
def test_grad_through_unrolled_steps(alpha):
    opt = gradx.lookahead(gradx.momentum(0.05, momentum=0.5), sync_period=2, alpha=alpha)
    params = tree_as(PARAMS0, jnp.float64)

    @jax.jit
    def final_loss(lr, p0):
        state = gradx.set_hyperparams(opt.init(p0), learning_rate=lr)
        return quadratic(_run_scan(opt, state, p0, 7))

    lr = jnp.float64(0.05)
    d_lr, d_p0 = jax.jit(jax.grad(final_loss, argnums=(0, 1)))(lr, params)
    h = 1e-6
    fd = (final_loss(lr + h, params) - final_loss(lr - h, params)) / (2 * h)
    np.testing.assert_allclose(d_lr, fd, rtol=1e-5, atol=1e-8)
    direction = jax.tree.map(jnp.ones_like, params)
    shifted = lambda e: jax.tree.map(lambda x, d: x + e * d, params, direction)
    fd_p = (final_loss(lr, shifted(h)) - final_loss(lr, shifted(-h))) / (2 * h)
    np.testing.assert_allclose(ravel_pytree(d_p0)[0].sum(), fd_p, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float64])
@pytest.mark.parametrize("alpha", [0.5, "quadratic"])
def test_keeps_dtypes(dtype, alpha):
    opt = gradx.lookahead(gradx.momentum(0.05, momentum=0.5), sync_period=2, alpha=alpha)
    params = tree_as(PARAMS0, dtype)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        value, grads = jax.value_and_grad(quadratic)(params)
        updates, state = opt.update(grads, state, params, value=value)
        return updates, optax.apply_updates(params, updates), state

    for _ in range(4):
        updates, params, state = step(params, state)
    assert all(x.dtype == dtype for x in jax.tree.leaves((updates, params, state.inner_state.slow)))
    want = jnp.float64 if dtype == jnp.float64 else jnp.float32
    hp = gradx.hyperparams(state)
    assert hp.pop("sync_period").dtype == jnp.int32
    assert all(v.dtype == want for v in hp.values())
    assert all(np.all(np.isfinite(np.asarray(x, np.float64))) for x in jax.tree.leaves(params))


def test_empty_and_none_leaves():
    for alpha in [0.5, "quadratic"]:
        opt = gradx.lookahead(gradx.sgd(0.1), sync_period=1, alpha=alpha)
        params = {"a": jnp.zeros((0,), jnp.float32), "b": None, "c": jnp.ones(2, jnp.float32)}
        state = opt.init(params)
        for _ in range(2):
            updates, state = jax.jit(opt.update)(params, state, params, value=jnp.float32(1.0))
            assert updates["a"].shape == (0,) and updates["b"] is None
            assert np.all(np.isfinite(updates["c"]))
