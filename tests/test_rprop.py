"""gradx.rprop: the seed's rule, iRprop⁻, and the JAX contract (jit, vmap, grad, dtypes)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference_sign as ref
from jax.flatten_util import ravel_pytree

import gradx

_rng = np.random.default_rng(4)
_Q = _rng.normal(size=(6, 6))
A = _Q @ _Q.T / 6 + np.eye(6)
B = _rng.normal(size=6)
PARAMS0 = {"b": np.array([[0.5, -1.0], [1.5, 0.2]]), "w": np.array([1.0, -2.0])}
FLAT0 = np.asarray(ravel_pytree(PARAMS0)[0])


def quadratic(params):
    x, _ = ravel_pytree(params)
    return 0.5 * x @ jnp.asarray(A, x.dtype) @ x - jnp.asarray(B, x.dtype) @ x


def tree_as(tree, dtype):
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


def trajectory(opt, steps, dtype=jnp.float64):
    params = tree_as(PARAMS0, dtype)
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        u, s = opt.update(jax.grad(quadratic)(p), s, p)
        return optax.apply_updates(p, u), s

    out = []
    for _ in range(steps):
        params, state = step(params, state)
        out.append(ravel_pytree(params)[0])
    return np.stack(out), state


def reference(rule, steps, dtype=np.float64, **hp):
    a, b = A.astype(dtype), B.astype(dtype)
    theta, state, out = FLAT0.astype(dtype), {}, []
    for t in range(1, steps + 1):
        theta, state = rule(theta, state, lambda x: a @ x - b, t, **hp)
        out.append(theta)
    return np.stack(out)


# ----------------------------------------------------------------------------- the rule


@pytest.mark.parametrize(
    "hp",
    [
        {"learning_rate": 0.05},
        {
            "learning_rate": 0.3,
            "eta_plus": 1.5,
            "eta_minus": 0.3,
            "min_step": 1e-3,
            "max_step": 0.4,
        },
    ],
)
def test_matches_the_seed_transcription(hp):
    got, _ = trajectory(gradx.rprop(**hp), 40)
    np.testing.assert_allclose(got, reference(ref.rprop, 40, **hp), rtol=1e-12, atol=1e-12)


def test_float32_matches_the_seed_transcription():
    got, _ = trajectory(gradx.rprop(0.05), 25, jnp.float32)
    want = reference(ref.rprop, 25, np.float32, learning_rate=0.05)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_irprop_minus_matches_its_transcription():
    hp = {"learning_rate": 0.05, "eta_plus": 1.2, "eta_minus": 0.5, "max_step": 0.3}
    got, _ = trajectory(gradx.rprop(**hp, irprop_minus=True), 40)
    np.testing.assert_allclose(got, reference(ref.irprop_minus, 40, **hp), rtol=1e-12, atol=1e-12)


def test_first_update_moves_by_the_learning_rate_and_a_zero_gradient_does_not_move():
    opt = gradx.rprop(0.1)
    params = {"w": jnp.array([1.0, 2.0, 3.0])}
    updates, state = opt.update({"w": jnp.array([5.0, -1e-30, 0.0])}, opt.init(params), params)
    np.testing.assert_array_equal(updates["w"], [-0.1, 0.1, 0.0])
    # t = 1 adapts nothing: every step size is still the learning rate
    np.testing.assert_array_equal(state.inner_state.step_size["w"], [0.1, 0.1, 0.1])


def test_step_sizes_grow_shrink_and_stay_in_bounds():
    opt = gradx.rprop(0.1, eta_plus=2.0, eta_minus=0.5, min_step=0.02, max_step=0.3)
    params = {"w": jnp.zeros(3)}
    state = opt.init(params)
    g = {"w": jnp.array([1.0, 1.0, 1.0])}
    flips = {"w": jnp.array([1.0, -1.0, 0.0])}
    sizes = []
    for grads in [g, g, g, flips, g, g, g]:
        _, state = opt.update(grads, state, params)
        sizes.append(np.asarray(state.inner_state.step_size["w"]))
    np.testing.assert_allclose(sizes[1], [0.2, 0.2, 0.2])  # same sign: ×2
    np.testing.assert_allclose(sizes[2], [0.3, 0.3, 0.3])  # clipped at max_step
    np.testing.assert_allclose(sizes[3], [0.3, 0.15, 0.15])  # flip and zero (≤ 0): ×0.5
    np.testing.assert_allclose(sizes[4], [0.3, 0.075, 0.075])  # after a zero: product 0, ×0.5
    np.testing.assert_allclose(sizes[6], [0.3, 0.3, 0.3])
    for _ in range(8):
        _, state = opt.update(flips, state, params)
        _, state = opt.update(g, state, params)
    assert float(state.inner_state.step_size["w"][2]) == pytest.approx(0.02)  # min_step


def test_learning_rate_is_clipped_on_the_first_step():
    opt = gradx.rprop(1.0, max_step=0.25)
    params = {"w": jnp.zeros(2)}
    updates, _ = opt.update({"w": jnp.array([3.0, -3.0])}, opt.init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.25, 0.25])


def test_differs_from_optax_whose_first_update_is_zero():
    params = tree_as(PARAMS0, jnp.float64)
    g = jax.grad(quadratic)(params)
    ours = gradx.rprop(0.05)
    with jax.numpy_dtype_promotion("standard"):
        theirs = optax.rprop(0.05)
        u_optax, _ = jax.jit(theirs.update)(g, theirs.init(params), params)
    u_ours, _ = jax.jit(ours.update)(g, ours.init(params), params)
    assert np.all(ravel_pytree(u_optax)[0] == 0)
    np.testing.assert_allclose(ravel_pytree(u_ours)[0], -0.05 * np.sign(ravel_pytree(g)[0]))


def test_set_learning_rate_before_the_first_update_takes_effect():
    opt = gradx.rprop(0.1)
    params = {"w": jnp.zeros(2)}
    state = gradx.set_hyperparams(opt.init(params), learning_rate=0.02)
    updates, _ = opt.update({"w": jnp.array([1.0, -1.0])}, state, params)
    np.testing.assert_allclose(updates["w"], [-0.02, 0.02])


@pytest.mark.parametrize(
    "loss, x0, lr, steps, tol",
    [
        (lambda p: 0.5 * (p[0] ** 2 + 100.0 * p[1] ** 2), (1.0, 1.0), 1e-2, 300, 1e-6),
        (
            lambda p: (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2,
            (-1.2, 1.0),
            1e-2,
            8000,
            1e-4,
        ),
    ],
    ids=["ill_quadratic", "rosenbrock"],
)
def test_converges(loss, x0, lr, steps, tol):
    opt = gradx.rprop(lr)

    def body(carry, _):
        p, s = carry
        u, s = opt.update(jax.grad(loss)(p), s, p)
        return (optax.apply_updates(p, u), s), None

    p0 = jnp.array(x0)
    (p, _), _ = jax.jit(lambda p, s: jax.lax.scan(body, (p, s), None, length=steps))(
        p0, opt.init(p0)
    )
    assert float(loss(p)) < tol


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"eta_plus": 1.0}, r"rprop: eta_plus must be > 1, got 1\.0"),
        ({"eta_minus": 1.0}, r"rprop: eta_minus must be in \(0, 1\), got 1\.0"),
        ({"eta_minus": 0.0}, r"rprop: eta_minus must be in \(0, 1\), got 0\.0"),
        ({"learning_rate": -0.1}, r"rprop: learning_rate must be >= 0, got -0\.1"),
        ({"min_step": -1e-6}, r"rprop: min_step must be >= 0, got -1e-06"),
        ({"max_step": 0.0}, r"rprop: max_step must be > 0, got 0\.0"),
        (
            {"min_step": 2.0, "max_step": 1.0},
            r"rprop: min_step must be <= max_step \(1\.0\), got 2\.0",
        ),
        ({"eta_plus": float("inf")}, r"rprop: eta_plus must be > 1, got inf"),
    ],
)
def test_bad_hyperparameters_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gradx.rprop(**kwargs)


def test_wrong_types_and_trees_are_clear_errors():
    with pytest.raises(TypeError, match=r"rprop: eta_plus must be a number > 1, got '1\.2'"):
        gradx.rprop(eta_plus="1.2")
    opt = gradx.rprop(0.1)
    state = opt.init({"w": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"(?s)gradient tree does not match.*'v'.*'w'.*init"):
        opt.update({"v": jnp.ones(3)}, state, {"w": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"set_hyperparams: eta_minus must be in \(0, 1\)"):
        gradx.set_hyperparams(state, eta_minus=1.5)


# ----------------------------------------------------------------------------- JAX contract


def test_jit_equals_eager():
    opt = gradx.rprop(0.05)
    params = tree_as(PARAMS0, jnp.float64)
    s_eager = s_jit = opt.init(params)
    for k in range(4):
        g = jax.tree.map(lambda x, k=k: x * (-1.0) ** k, jax.grad(quadratic)(params))
        u_eager, s_eager = opt.update(g, s_eager, params)
        u_jit, s_jit = jax.jit(opt.update)(g, s_jit, params)
        np.testing.assert_array_equal(ravel_pytree(u_jit)[0], ravel_pytree(u_eager)[0])


def test_no_retrace_when_hyperparameters_change():
    opt = gradx.rprop(0.05)
    traces = []

    @jax.jit
    def step(params, state):
        traces.append(1)
        updates, state = opt.update(jax.grad(quadratic)(params), state, params)
        return optax.apply_updates(params, updates), state

    params = tree_as(PARAMS0, jnp.float32)
    params, state = step(params, opt.init(params))
    state = gradx.set_hyperparams(state, eta_plus=1.5, max_step=0.1, learning_rate=0.01)
    params, state = step(params, state)
    params, state = step(params, state)
    assert len(traces) == 1
    assert float(gradx.hyperparams(state)["eta_plus"]) == 1.5


def test_vmap_over_learning_rates_equals_separate_runs():
    opt = gradx.rprop(0.1)
    params = tree_as(PARAMS0, jnp.float32)
    lrs = jnp.array([0.01, 0.05, 0.2], jnp.float32)

    def train(state):
        def body(carry, _):
            p, s = carry
            updates, s = opt.update(jax.grad(quadratic)(p), s, p)
            return (optax.apply_updates(p, updates), s), None

        return jax.lax.scan(body, (params, state), None, length=12)[0]

    states = jax.vmap(lambda lr: gradx.set_hyperparams(opt.init(params), learning_rate=lr))(lrs)
    batched = jax.jit(jax.vmap(train))(states)
    for k, lr in enumerate(lrs):
        alone = jax.jit(train)(gradx.rprop(float(lr)).init(params))
        for got, want in zip(jax.tree.leaves(batched), jax.tree.leaves(alone), strict=True):
            np.testing.assert_allclose(got[k], want, rtol=1e-6, atol=1e-6)


def test_grad_through_unrolled_steps():
    params = tree_as(PARAMS0, jnp.float64)
    opt = gradx.rprop(0.05)

    @jax.jit
    def final_loss(lr, eta_plus):
        state = gradx.set_hyperparams(opt.init(params), learning_rate=lr, eta_plus=eta_plus)

        def body(carry, _):
            p, s = carry
            updates, s = opt.update(jax.grad(quadratic)(p), s, p)
            return (optax.apply_updates(p, updates), s), None

        (p, _), _ = jax.lax.scan(body, (params, state), None, length=6)
        return quadratic(p)

    lr, eta = jnp.float64(0.05), jnp.float64(1.2)
    d_lr, d_eta = jax.jit(jax.grad(final_loss, argnums=(0, 1)))(lr, eta)
    h = 1e-6
    fd_lr = (final_loss(lr + h, eta) - final_loss(lr - h, eta)) / (2 * h)
    fd_eta = (final_loss(lr, eta + h) - final_loss(lr, eta - h)) / (2 * h)
    np.testing.assert_allclose([d_lr, d_eta], [fd_lr, fd_eta], rtol=1e-5, atol=1e-8)
    assert abs(float(d_lr)) > 0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float64])
@pytest.mark.parametrize("irprop_minus", [False, True])
def test_keeps_dtypes(dtype, irprop_minus):
    opt = gradx.rprop(0.1, irprop_minus=irprop_minus)
    params = tree_as(PARAMS0, dtype)
    state = opt.init(params)
    for k in range(3):
        grads = jax.tree.map(lambda x, k=k: x * (-1) ** k, tree_as(PARAMS0, dtype))
        updates, state = jax.jit(opt.update)(grads, state, params)
        params = optax.apply_updates(params, updates)
    assert all(x.dtype == dtype for x in jax.tree.leaves((updates, params)))
    assert all(x.dtype == dtype for x in jax.tree.leaves(state.inner_state.step_size))
    want = jnp.float64 if dtype == jnp.float64 else jnp.float32
    assert all(v.dtype == want for v in gradx.hyperparams(state).values())
    assert all(np.all(np.isfinite(np.asarray(x, np.float64))) for x in jax.tree.leaves(params))


def test_empty_and_none_leaves():
    opt = gradx.rprop(0.1)
    params = {"a": jnp.zeros((0,), jnp.float32), "b": None, "c": jnp.ones(2, jnp.float32)}
    updates, _ = jax.jit(opt.update)(params, opt.init(params), params)
    assert updates["a"].shape == (0,) and updates["b"] is None
    np.testing.assert_allclose(updates["c"], [-0.1, -0.1])


def test_composes_with_optax():
    params = tree_as(PARAMS0, jnp.float64)
    g = jax.grad(quadratic)(params)
    opt = optax.chain(optax.clip_by_global_norm(0.5), gradx.rprop(0.05))
    updates, state = opt.update(g, opt.init(params), params)
    np.testing.assert_allclose(ravel_pytree(updates)[0], -0.05 * np.sign(ravel_pytree(g)[0]))
    assert float(gradx.hyperparams(state)["learning_rate"]) == 0.05
    assert gradx.OPTIMIZERS["rprop"] is gradx.rprop


@pytest.mark.parametrize("irprop_minus", [False, True])
def test_bf16_gradients_on_float32_params_keep_the_state_dtypes_and_scan(irprop_minus):
    # The state is stored like the params whatever the gradient's dtype: α stays float32
    # (0.1·1.2 = 0.12 in float32, not bfloat16's 0.120117), and lax.scan's carry keeps its type.
    opt = gradx.rprop(0.1, irprop_minus=irprop_minus)
    params = tree_as(PARAMS0, jnp.float32)
    grads = jax.tree.map(lambda x: (x / 4).astype(jnp.bfloat16), params)
    state = opt.init(params)
    dtypes = jax.tree.map(lambda x: x.dtype, state)
    for _ in range(3):
        _, state = jax.jit(opt.update)(grads, state, params)
        assert jax.tree.map(lambda x: x.dtype, state) == dtypes
    want = np.float32(np.float32(np.float32(0.1) * np.float32(1.2)) * np.float32(1.2))
    for step in jax.tree.leaves(state.inner_state.step_size):
        np.testing.assert_array_equal(step, want)
    for prev, g in zip(*map(jax.tree.leaves, (state.inner_state.prev_grad, grads)), strict=True):
        np.testing.assert_array_equal(prev, np.asarray(g, np.float32))

    def body(s, _):
        return opt.update(grads, s, params)[1], None

    scanned, _ = jax.lax.scan(body, opt.init(params), None, length=3)
    jax.tree.map(np.testing.assert_array_equal, scanned, state)
