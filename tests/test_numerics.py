"""Numerics across dtypes: complex params, float16 steps, moment dtypes, decay masks, sgd.

Every number is checked against optax run live or a NumPy transcription of the formula.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

import gradx

# ----------------------------------------------------------------------------- complex params

# A complex parabola Σ w·|z − z*|² with a different curvature per coordinate (so that the
# adaptive methods differ from SGD); the gradient fed to the optimizers is conj(∂/∂z), as in
# optax's own complex tests.
_W = np.array([1.0, 10.0, 0.1], np.float32)
_Z0 = np.array([-1.0 + 0.5j, 10.0 - 2.0j, 1.0 + 1.0j])
_ZSTAR = np.array([1.0, -1.0, 1.0]) * (1 + 1j)


def _complex_loss(z):
    d = z - jnp.asarray(_ZSTAR, z.dtype)
    return jnp.sum(jnp.asarray(_W, d.real.dtype) * (d * jnp.conj(d)).real)


def _complex_trajectory(opt, dtype=np.complex64, steps=20):
    @jax.jit
    def step(z, state):
        g = jnp.conj(jax.grad(_complex_loss)(z))
        u, state = opt.update(g, state, z)
        return optax.apply_updates(z, u), state

    z = jnp.asarray(_Z0, dtype)
    state = opt.init(z)
    out = []
    for _ in range(steps):
        z, state = step(z, state)
        out.append(z)
    return np.stack(out)


LR = 0.05
COMPLEX_CASES = {
    "adam": (lambda: gradx.adam(LR), lambda: optax.adam(LR)),
    "adamw": (lambda: gradx.adamw(LR, weight_decay=0.1), lambda: optax.adamw(LR, weight_decay=0.1)),
    "nadam": (lambda: gradx.nadam(LR, momentum_decay=None), lambda: optax.nadam(LR)),
    "amsgrad": (lambda: gradx.amsgrad(LR, max_of="v_hat"), lambda: optax.amsgrad(LR)),
    "adamax": (lambda: gradx.adamax(LR), lambda: optax.adamax(LR)),
    "rmsprop": (lambda: gradx.rmsprop(LR), lambda: optax.rmsprop(LR, eps_in_sqrt=False)),
    "rmsprop_eps_in_sqrt": (
        lambda: gradx.rmsprop(LR, eps=1e-6, eps_in_sqrt=True),
        lambda: optax.rmsprop(LR, eps=1e-6),
    ),
    "rmsprop_centered_momentum": (
        lambda: gradx.rmsprop(LR, centered=True, momentum=0.5),
        lambda: optax.rmsprop(LR, eps_in_sqrt=False, centered=True, momentum=0.5),
    ),
    "adagrad": (
        lambda: gradx.adagrad(LR, eps=1e-7, initial_accumulator_value=0.1, eps_in_sqrt=True),
        lambda: optax.adagrad(LR),
    ),
    "sgd": (lambda: gradx.sgd(LR), lambda: optax.sgd(LR)),
    "sgd_momentum": (lambda: gradx.sgd(LR, momentum=0.9), lambda: optax.sgd(LR, momentum=0.9)),
    "sgd_nesterov": (
        lambda: gradx.sgd(LR, momentum=0.9, nesterov=True),
        lambda: optax.sgd(LR, momentum=0.9, nesterov=True),
    ),
    "momentum": (lambda: gradx.momentum(LR, momentum=0.8), lambda: optax.sgd(LR, momentum=0.8)),
    "ema_momentum": (
        lambda: gradx.ema_momentum(LR, beta=0.9),
        lambda: optax.chain(optax.ema(0.9, debias=False), optax.scale(-LR)),
    ),
}


@pytest.mark.parametrize("name", list(COMPLEX_CASES))
def test_complex64_matches_optax_live(name):
    make, optax_make = COMPLEX_CASES[name]
    got = _complex_trajectory(make())  # gradx under strict promotion
    with jax.numpy_dtype_promotion("standard"):
        want = _complex_trajectory(optax_make())
    assert got.dtype == np.complex64
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_complex_second_moment_is_real_and_hyperparameters_real():
    for dtype, real in [(jnp.complex64, jnp.float32), (jnp.complex128, jnp.float64)]:
        state = gradx.adam(0.1).init(jnp.zeros(3, dtype))
        assert all(v.dtype == real for v in gradx.hyperparams(state).values())
        pre = state.inner_state[0]  # PreconditionState: by name, not by position
        ema_state, rms_state = pre.direction, pre.by
        assert ema_state.mean.dtype == dtype and rms_state.nu.dtype == real
    assert gradx.hyperparam_dtype({"z": jnp.zeros(2, jnp.complex128)}) == jnp.float64


def _adam_complex_numpy(steps, lr=LR, b1=0.9, b2=0.999, eps=1e-8):
    """Adam on complex numbers, v accumulating |g|² (complex128 NumPy)."""
    z, m, v, out = _Z0.astype(np.complex128), 0, 0, []
    for t in range(1, steps + 1):
        g = 2 * _W * (z - _ZSTAR)  # the gradient fed: conj of JAX's grad of Σ w·|z − z*|²
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * np.abs(g) ** 2
        z = z - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        out.append(z)
    return np.stack(out)


def test_complex128_adam_matches_numpy_transcription():
    got = _complex_trajectory(gradx.adam(LR), np.complex128, 15)
    np.testing.assert_allclose(got, _adam_complex_numpy(15), rtol=1e-12, atol=1e-13)


def test_complex128_adadelta_uses_squared_modulus():
    # optax's adadelta squares g (its tests skip complex params); gradx accumulates |g|² and
    # |d|², so d keeps g's phase: checked against a NumPy transcription.
    got = _complex_trajectory(gradx.adadelta(1.0, rho=0.9, eps=1e-6), np.complex128, 15)
    z, e_g, e_d, want = _Z0.astype(np.complex128), 0.0, 0.0, []
    for _ in range(15):
        g = 2 * _W * (z - _ZSTAR)
        e_g = 0.9 * e_g + 0.1 * np.abs(g) ** 2
        d = np.sqrt(e_d + 1e-6) / np.sqrt(e_g + 1e-6) * g
        e_d = 0.9 * e_d + 0.1 * np.abs(d) ** 2
        z = z - d
        want.append(z)
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-12, atol=1e-13)


def test_complex_normalized_sgd_steps_by_exactly_the_learning_rate():
    z = jnp.asarray(_Z0, jnp.complex128)
    g = jnp.conj(jax.grad(_complex_loss)(z))
    opt = gradx.normalized_sgd(0.3)
    u, _ = opt.update(g, opt.init(z))
    g_np = np.asarray(g)
    np.testing.assert_allclose(u, -0.3 * g_np / np.sqrt(np.sum(np.abs(g_np) ** 2)), rtol=1e-12)


def test_rprop_refuses_complex_params():
    with pytest.raises(TypeError, match=r"scale_by_rprop: params must be real, got a complex64"):
        gradx.rprop(0.1).init({"z": jnp.zeros(2, jnp.complex64)})


# ----------------------------------------------------------------------------- float16 steps


def _adam_state_moments(state):
    pre = state.inner_state[0]  # PreconditionState: by name, not by position
    return pre.direction.mean, pre.by.nu


@pytest.mark.parametrize("g", [1e-3, 1e-4])
def test_float16_adam_step_is_computed_in_float32_and_cast_once(g):
    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-8
    opt = gradx.adam(lr, b1, b2, eps)
    params = jnp.zeros(4, jnp.float16)
    grad = jnp.full(4, g, jnp.float16)
    state = opt.init(params)
    for t in range(1, 4):
        # The float32 computation of Adam's step from the float16-stored moments.
        m, v = (np.asarray(x, np.float32) for x in _adam_state_moments(state))
        g32 = np.float32(np.float16(g))
        m = np.float32(b1) * m + np.float32(1 - np.float32(b1)) * g32
        v = np.float32(b2) * v + np.float32(1 - np.float32(b2)) * g32 * g32
        m_hat = m / np.float32(1 - np.float32(b1) ** t)
        v_hat = v / np.float32(1 - np.float32(b2) ** t)
        want = (np.float32(-lr) * m_hat / (np.sqrt(v_hat) + np.float32(eps))).astype(np.float16)
        u, state = jax.jit(opt.update)(grad, state, params)
        assert u.dtype == jnp.float16 and np.all(np.isfinite(np.asarray(u)))
        np.testing.assert_allclose(np.asarray(u, np.float32), want, rtol=2e-3)
    # The first step of Adam is −γ·sign(g) whatever the scale of g.
    u1, _ = opt.update(grad, opt.init(params), params)
    np.testing.assert_allclose(np.asarray(u1, np.float32), -lr, rtol=2e-3)


@pytest.mark.parametrize(
    "make",
    [gradx.adam, gradx.adamw, gradx.nadam, gradx.amsgrad, gradx.adamax, gradx.rmsprop,
     gradx.adagrad, gradx.radam, gradx.adopt],
    ids=lambda f: f.__name__,
)  # fmt: skip
def test_float16_params_keep_second_moments_in_float32_and_step_as_float32_params(make):
    # (1 − β₂)·g² = 1e-9 is below float16's smallest value: a float16 v stayed 0 and Adam's
    # step grew to 16 times γ by step 300, silently. Second moments of float16 leaves are
    # float32 unless a dtype is given; the steps then follow the float32 run's.
    half, full = make(1e-3), make(1e-3)
    p16, p32 = jnp.zeros(3, jnp.float16), jnp.zeros(3, jnp.float32)
    s16, s32 = half.init(p16), full.init(p32)
    for _ in range(300):
        u16, s16 = jax.jit(half.update)(jnp.full(3, 1e-3, jnp.float16), s16, p16)
        u32, s32 = jax.jit(full.update)(jnp.full(3, np.float16(1e-3), jnp.float32), s32, p32)
        assert u16.dtype == jnp.float16
    np.testing.assert_allclose(np.asarray(u16, np.float32), np.asarray(u32), rtol=5e-3)
    dtypes = {leaf.dtype for leaf in jax.tree.leaves(s16) if leaf.shape == (3,)}
    assert jnp.dtype(jnp.float32) in dtypes, dtypes  # the second moment


def test_a_float16_second_moment_saved_by_an_earlier_gradx_is_refused_with_the_remedy():
    # before the rule such a state held v in float16 (stuck at 0): restored by a library that
    # keeps dtypes (flax msgpack, pickle) it is refused at trace time, not stepped with
    params, grad = jnp.zeros(3, jnp.float16), jnp.full(3, 1e-3, jnp.float16)
    opt = gradx.adam(1e-3)
    old = gradx.adam(1e-3, nu_dtype=jnp.float16).init(params)  # what was stored then
    with pytest.raises(TypeError, match=r"^rms: the never-negative moment at \(the root\) of "
                       r"the state is float16, but gradx stores it in float32 .* cast it to "
                       r"opt\.init\(params\)'s dtypes"):  # fmt: skip
        jax.jit(opt.update)(grad, old, params)
    new = opt.init(params)  # the remedy the message gives
    state = jax.tree.unflatten(
        jax.tree.structure(new),
        [x.astype(t.dtype) for t, x in zip(jax.tree.leaves(new), jax.tree.leaves(old), strict=True)],
    )
    for _ in range(300):
        u, state = jax.jit(opt.update)(grad, state, params)
    np.testing.assert_allclose(np.asarray(u, np.float32), -1e-3, rtol=1e-2)


def test_float16_moment_dtypes_follow_the_rule_and_an_explicit_dtype_wins():
    params = jnp.zeros(2, jnp.float16)
    mean, nu = _adam_state_moments(gradx.adam(1e-3).init(params))
    assert (mean.dtype, nu.dtype) == (jnp.float16, jnp.float32)  # m follows, v is widened
    _, nu = _adam_state_moments(gradx.adam(1e-3, nu_dtype=jnp.float16).init(params))
    assert nu.dtype == jnp.float16  # asked for: kept
    _, nu = _adam_state_moments(gradx.adam(1e-3).init(jnp.zeros(2, jnp.bfloat16)))
    assert nu.dtype == jnp.bfloat16  # float32's exponent range: follows the params


# ----------------------------------------------------------------------------- moment dtypes

_MU_FIELDS, _NU_FIELDS = {"mean", "velocity"}, {"nu", "nu_max", "sum_of_squares", "u", "e_g", "e_d"}

MOMENT_CASES = {
    "adam": (gradx.adam, True, True),
    "adamw": (gradx.adamw, True, True),
    "amsgrad": (gradx.amsgrad, True, True),
    "adamax": (gradx.adamax, True, True),
    "nadam": (gradx.nadam, True, True),
    "rmsprop_centered_momentum": (
        lambda lr, **kw: gradx.rmsprop(lr, centered=True, momentum=0.5, **kw),
        True,
        True,
    ),
    "adagrad": (gradx.adagrad, False, True),
    "adadelta": (gradx.adadelta, False, True),
    "momentum": (gradx.momentum, True, False),
    "nesterov": (gradx.nesterov, True, False),
    "ema_momentum": (gradx.ema_momentum, True, False),
    "sgd_momentum": (lambda lr, **kw: gradx.sgd(lr, momentum=0.9, **kw), True, False),
}


def _moments(state):
    """(kind, dtype) of every params-shaped leaf of the state, kind 'mu' or 'nu'."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(state.inner_state)[0]:
        if jnp.shape(leaf) != (3,):
            continue
        names = [getattr(k, "name", None) for k in path]
        field = names[-1]
        if field in _NU_FIELDS or (field == "mean" and "by" in names):  # rms's centered mean
            out.append(("nu", leaf.dtype))
        else:
            assert field in _MU_FIELDS, path
            out.append(("mu", leaf.dtype))
    return out


@pytest.mark.parametrize("name", list(MOMENT_CASES))
def test_mu_and_nu_dtypes_set_the_stored_moments_and_default_follows_params(name):
    make, has_mu, has_nu = MOMENT_CASES[name]
    params = jnp.ones(3, jnp.bfloat16)
    kw = {
        **({"mu_dtype": jnp.float32} if has_mu else {}),
        **({"nu_dtype": jnp.float64} if has_nu else {}),
    }
    opt = make(0.1, **kw)
    state = opt.init(params)
    u, state = jax.jit(opt.update)(jnp.full(3, 0.5, jnp.bfloat16), state, params)
    assert u.dtype == jnp.bfloat16
    moments = _moments(state)
    assert {kind for kind, _ in moments} == {k for k, h in (("mu", has_mu), ("nu", has_nu)) if h}
    want = {"mu": jnp.float32, "nu": jnp.float64}
    assert all(dtype == want[kind] for kind, dtype in moments), moments
    default = make(0.1)
    state = default.init(params)
    _, state = jax.jit(default.update)(jnp.full(3, 0.5, jnp.bfloat16), state, params)
    assert all(dtype == jnp.bfloat16 for _, dtype in _moments(state))


def test_float32_moments_for_bf16_params_match_a_float32_transcription_better():
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-8
    rng = np.random.default_rng(0)
    grads = (1 + 0.05 * rng.normal(size=(40, 8))).astype(ml_dtypes.bfloat16)
    params = jnp.zeros(8, jnp.bfloat16)

    def updates_of(opt):
        state, out = opt.init(params), []
        step = jax.jit(opt.update)
        for g in grads:
            u, state = step(jnp.asarray(g), state, params)
            out.append(np.asarray(u, np.float32))
        return np.stack(out), state

    m, v, want = np.zeros(8, np.float32), np.zeros(8, np.float32), []
    for t, g in enumerate(grads.astype(np.float32), start=1):
        m = np.float32(b1) * m + np.float32(1 - np.float32(b1)) * g
        v = np.float32(b2) * v + np.float32(1 - np.float32(b2)) * g * g
        m_hat = m / np.float32(1 - np.float32(b1) ** t)
        v_hat = v / np.float32(1 - np.float32(b2) ** t)
        step = np.float32(-lr) * m_hat / (np.sqrt(v_hat) + np.float32(eps))
        want.append(step.astype(ml_dtypes.bfloat16).astype(np.float32))
    want = np.stack(want)

    wide, state = updates_of(
        gradx.adam(lr, b1, b2, eps, mu_dtype=jnp.float32, nu_dtype=jnp.float32)
    )
    narrow, narrow_state = updates_of(gradx.adam(lr, b1, b2, eps))
    assert [x.dtype for x in _adam_state_moments(state)] == [jnp.float32, jnp.float32]
    assert [x.dtype for x in _adam_state_moments(narrow_state)] == [jnp.bfloat16, jnp.bfloat16]
    err_wide = np.max(np.abs(wide - want)) / lr
    err_narrow = np.max(np.abs(narrow - want)) / lr
    assert err_wide <= 2**-8  # one bf16 rounding of the final step, at most
    assert err_narrow > 4 * err_wide


@pytest.mark.parametrize("bad", [jnp.int32, "complex64", "float33"])
def test_moment_dtype_must_be_a_real_floating_dtype(bad):
    with pytest.raises(TypeError, match=r"^adam: mu_dtype must be a real floating dtype"):
        gradx.adam(1e-3, mu_dtype=bad)
    with pytest.raises(TypeError, match=r"^adagrad: nu_dtype must be a real floating dtype"):
        gradx.adagrad(1e-3, nu_dtype=bad)


def test_complex_params_store_mu_in_the_complex_counterpart_of_mu_dtype():
    state = gradx.adam(0.1, mu_dtype=jnp.float64, nu_dtype=jnp.float64).init(
        jnp.zeros(3, jnp.complex64)
    )
    mu, nu = _adam_state_moments(state)
    assert mu.dtype == jnp.complex128 and nu.dtype == jnp.float64
    with pytest.raises(
        TypeError, match=r"accumulator_dtype must be float32 or float64 for complex params"
    ):
        gradx.adam(0.1, mu_dtype=jnp.bfloat16).init(jnp.zeros(3, jnp.complex64))


# ----------------------------------------------------------------------------- decay masks

_PARAMS = {"w": jnp.asarray([[0.5, -1.0], [1.5, 0.2]]), "b": jnp.asarray([1.0, -2.0])}
_MASK = {"w": True, "b": False}


def _grads(n=20, seed=3):
    rng = np.random.default_rng(seed)
    return [
        {"w": jnp.asarray(rng.normal(size=(2, 2))), "b": jnp.asarray(rng.normal(size=2))}
        for _ in range(n)
    ]


def _params_run(opt, dtype=jnp.float64):
    params = jax.tree.map(lambda x: x.astype(dtype), _PARAMS)
    state, out = opt.init(params), []
    step = jax.jit(opt.update)
    for g in _grads():
        u, state = step(jax.tree.map(lambda x: x.astype(dtype), g), state, params)
        out.append(u)
        params = optax.apply_updates(params, u)
    return out


@pytest.mark.parametrize(
    "mask",
    [_MASK, lambda p: {"w": p["w"].ndim > 1, "b": p["b"].ndim > 1}],
    ids=["tree", "function"],
)
def test_adamw_masked_leaves_get_exactly_adams_update(mask):
    masked = _params_run(gradx.adamw(0.05, weight_decay=0.5, mask=mask))
    adam = _params_run(gradx.adam(0.05))
    full = _params_run(gradx.adamw(0.05, weight_decay=0.5))
    for got, plain, decayed in zip(masked, adam, full, strict=True):
        np.testing.assert_array_equal(got["b"], plain["b"])  # bit for bit
        np.testing.assert_array_equal(got["w"], decayed["w"])
    assert not np.array_equal(masked[-1]["w"], adam[-1]["w"])


def test_adamw_mask_matches_optax_live():
    mask = lambda p: jax.tree.map(lambda x: x.ndim > 1, p)
    got = _params_run(gradx.adamw(0.05, weight_decay=0.5, mask=mask), jnp.float32)
    with jax.numpy_dtype_promotion("standard"):
        want = _params_run(optax.adamw(0.05, weight_decay=0.5, mask=mask), jnp.float32)
    for g, w in zip(got, want, strict=True):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g, w)


def test_mask_may_be_a_prefix_and_the_path_one_liner_works():
    nested = {"dense": {"kernel": _PARAMS["w"], "bias": _PARAMS["b"]}, "head": _PARAMS["b"]}
    no_bias = lambda p: jax.tree.map_with_path(
        lambda path, _: "bias" not in jax.tree_util.keystr(path), p
    )
    grads = jax.tree.map(jnp.ones_like, nested)
    prefix = gradx.decoupled_weight_decay(0.5, 0.1, mask={"dense": False, "head": True})
    u, _ = prefix.update(grads, prefix.init(nested), nested)
    np.testing.assert_array_equal(u["dense"]["kernel"], grads["dense"]["kernel"])
    np.testing.assert_allclose(u["head"], 1 - 0.05 * np.asarray(nested["head"]))
    by_path = gradx.add_decayed_weights(0.5, mask=no_bias)
    u, _ = by_path.update(grads, by_path.init(nested), nested)
    np.testing.assert_array_equal(u["dense"]["bias"], grads["dense"]["bias"])
    np.testing.assert_allclose(u["dense"]["kernel"], 1 + 0.5 * np.asarray(_PARAMS["w"]))


def test_bad_masks_are_refused_clearly():
    with pytest.raises(TypeError, match=r"decoupled_weight_decay: mask must be a pytree of bools"):
        gradx.adamw(0.1, mask={"w": 1, "b": 0})
    opt = gradx.adamw(0.1, mask={"w": True})
    with pytest.raises(gradx.TreeMismatchError, match=r"mask tree does not match the params"):
        opt.init(_PARAMS)


# ----------------------------------------------------------------------------- optax's sgd


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize(
    "lr", [0.05, optax.exponential_decay(0.08, 3, 0.5)], ids=["constant", "schedule"]
)
def test_sgd_with_momentum_matches_optax_sgd_live(lr, nesterov):
    got = _params_run(gradx.sgd(lr, 0.9, nesterov), jnp.float32)
    with jax.numpy_dtype_promotion("standard"):
        want = _params_run(optax.sgd(lr, 0.9, nesterov), jnp.float32)
    for g, w in zip(got, want, strict=True):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8), g, w)


def test_sgd_spelling_checks():
    assert set(gradx.hyperparams(gradx.sgd(0.1).init(_PARAMS))) == {"learning_rate"}
    state = gradx.sgd(0.1, momentum=0.9).init(_PARAMS)
    assert float(gradx.hyperparams(state)["momentum"]) == pytest.approx(0.9)
    with pytest.raises(ValueError, match=r"^sgd: nesterov=True needs a momentum"):
        gradx.sgd(0.1, nesterov=True)
    with pytest.raises(ValueError, match=r"^sgd: mu_dtype=.* momentum=None keeps no buffer"):
        gradx.sgd(0.1, mu_dtype=jnp.float32)
    with pytest.raises(ValueError, match=r"^sgd: momentum must be in \[0, 1\), got 1.5"):
        gradx.sgd(0.1, momentum=1.5)


@pytest.mark.parametrize("scale", [1e-30, 1e-20, 1.0, 1e20, 1e30])
def test_float32_normalized_sgd_steps_by_the_learning_rate_at_any_gradient_scale(scale):
    # Σg² under- or overflows float32 beyond ‖g‖ ≈ 1e±19: the step must still be −γ·g/‖g‖
    # (a 0 step only at g = 0), and the effective learning rate γ/‖g‖.
    g64 = {"a": np.array([3.0, -4.0]) * scale, "b": np.array([[1e-3, 0.0], [-2.5, 12.0]]) * scale}
    grads = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g64)
    params = jax.tree.map(jnp.zeros_like, grads)
    opt = gradx.normalized_sgd(0.1)
    updates, state = jax.jit(opt.update)(grads, opt.init(params), params)
    g32 = jax.tree.map(lambda x: np.asarray(x, np.float64), grads)  # the float32 gradient
    norm = np.sqrt(sum(np.sum(x**2) for x in jax.tree.leaves(g32)))
    for k in g64:
        assert updates[k].dtype == jnp.float32
        np.testing.assert_allclose(updates[k], -0.1 * g32[k] / norm, rtol=1e-6, atol=0)
    alpha = gradx.effective_learning_rate(opt, state, params, grads=grads)
    for k in g64:
        np.testing.assert_allclose(alpha[k], np.full(g64[k].shape, 0.1 / norm), rtol=1e-6)
