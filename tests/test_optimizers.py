"""One table-driven suite over every gradx optimizer.

A new optimizer joins by adding a ``Case``: its constructor, the NumPy transcription of its
seed formula (``tests/reference.py``), optax's equivalent if optax has one, and learning rates
that make it converge on the two test problems.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference_lookahead as ref_lookahead
import reference_sign as ref_sign
from jax.flatten_util import ravel_pytree

import gradx

import reference as ref


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    make: Callable[..., Any]  # make(learning_rate, **hp) -> gradx optimizer
    rule: Callable[
        ..., Any
    ]  # NumPy transcription: rule(theta, state, grad_fn, t, learning_rate, **hp)
    hp: dict = dataclasses.field(default_factory=dict)
    observe: Callable[..., Any] | None = None  # the point the params track, if not theta
    optax_make: Callable[..., Any] | None = None  # optax_make(learning_rate) -> same rule in optax
    quad: tuple = (1e-2, 2000)  # (learning rate, steps) to converge on the quadratic
    rosen: tuple = (1e-3, 5000)  # ... and on Rosenbrock
    converge_hp: dict | None = None  # hp for the convergence tests, if not hp

    def __str__(self) -> str:
        return self.name


def _decay(lr, every=200):
    return optax.exponential_decay(lr, transition_steps=every, decay_rate=0.5)


def _variant(make, **fixed):
    return lambda lr, **hp: make(lr, **fixed, **hp)


def _rule_variant(rule, **fixed):
    return lambda *args, **hp: rule(*args, **fixed, **hp)


CASES = [
    Case(
        "sgd", gradx.sgd, ref.sgd, optax_make=optax.sgd, quad=(1.5e-2, 2000), rosen=(1.5e-3, 30000)
    ),
    Case(
        "momentum",
        gradx.momentum,
        ref.momentum,
        {"momentum": 0.8},
        optax_make=lambda lr: optax.sgd(lr, momentum=0.8),
        quad=(5e-3, 2000),
        rosen=(1e-3, 5000),
    ),
    Case(
        "momentum_nesterov",
        lambda lr, **hp: gradx.momentum(lr, nesterov=True, **hp),
        ref.nesterov,
        {"momentum": 0.8},
        observe=ref.nesterov_observe,
        optax_make=lambda lr: optax.sgd(lr, momentum=0.8, nesterov=True),
        quad=(5e-3, 2000),
        rosen=(1e-3, 5000),
    ),
    Case(
        "nesterov",
        gradx.nesterov,
        ref.nesterov,
        {"momentum": 0.9},
        observe=ref.nesterov_observe,
        optax_make=lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True),
        quad=(5e-3, 2000),
        rosen=(1e-3, 5000),
    ),
    Case(
        "ema_momentum",
        gradx.ema_momentum,
        ref.ema_momentum,
        {"beta": 0.9},
        optax_make=lambda lr: optax.chain(optax.ema(0.9, debias=False), optax.scale(-lr)),
        quad=(5e-2, 2000),
        rosen=(1e-2, 5000),
    ),
    Case(
        "ema_momentum_bc",
        lambda lr, **hp: gradx.ema_momentum(lr, bias_correction=True, **hp),
        lambda *a, **hp: ref.ema_momentum(*a, bias_correction=True, **hp),
        {"beta": 0.8},
        optax_make=lambda lr: optax.chain(optax.ema(0.8, debias=True), optax.scale(-lr)),
        quad=(3e-3, 3000),
        rosen=(1e-3, 12000),
    ),
    Case(
        "normalized_sgd",
        gradx.normalized_sgd,
        ref.normalized_sgd,
        quad=(_decay(0.5), 3000),
        rosen=(optax.exponential_decay(0.05, 2000, 0.5), 20000),
    ),
    Case("adagrad", gradx.adagrad, ref.adagrad, quad=(0.1, 3000), rosen=(1.0, 10000)),
    Case(
        "adagrad_optax_convention",
        _variant(gradx.adagrad, eps_in_sqrt=True),
        lambda th, st, gf, t, learning_rate, eps, initial_accumulator_value: ref.adagrad(
            th, st, gf, t, learning_rate, 0.0, initial_accumulator_value + eps
        ),  # sqrt(G + eps) with G0 = g0 is sqrt(G') with G0' = g0 + eps
        {"eps": 1e-7, "initial_accumulator_value": 0.1},
        optax_make=optax.adagrad,
        quad=(0.1, 3000),
        rosen=(1.0, 10000),
    ),
    Case(
        "rmsprop",
        gradx.rmsprop,
        ref.rmsprop,
        optax_make=lambda lr: optax.rmsprop(lr, eps_in_sqrt=False),
        quad=(_decay(3e-3, 500), 3000),
        rosen=(_decay(1e-2, 500), 5000),
    ),
    Case(
        "rmsprop_eps_in_sqrt",
        _variant(gradx.rmsprop, eps_in_sqrt=True),
        ref.rmsprop_eps_in_sqrt,
        {"eps": 1e-6},
        optax_make=lambda lr: optax.rmsprop(lr, eps=1e-6),
        quad=(_decay(3e-3, 500), 3000),
        rosen=(_decay(1e-2, 500), 5000),
    ),
    Case(
        "rmsprop_bias_corrected",
        _variant(gradx.rmsprop, bias_correction=True),
        ref.rmsprop_bias_corrected,
        optax_make=lambda lr: optax.rmsprop(lr, eps_in_sqrt=False, bias_correction=True),
        quad=(_decay(3e-3, 500), 3000),
        rosen=(_decay(1e-2, 500), 5000),
    ),
    Case(
        "rmsprop_centered_momentum",
        _variant(gradx.rmsprop, centered=True),
        ref.rmsprop_centered_momentum,
        {"momentum": 0.5},
        optax_make=lambda lr: optax.rmsprop(lr, eps_in_sqrt=False, centered=True, momentum=0.5),
        quad=(_decay(1e-3, 500), 3000),
        rosen=(_decay(1e-3, 500), 5000),
    ),
    Case(
        "adadelta",
        gradx.adadelta,
        ref.adadelta,
        optax_make=optax.adadelta,
        quad=(_decay(1.0, 500), 3000),
        rosen=(_decay(1.0, 500), 8000),
    ),
    Case(
        "adam",
        gradx.adam,
        ref.adam,
        optax_make=optax.adam,
        quad=(_decay(3e-2, 500), 3000),
        rosen=(_decay(0.3, 500), 5000),
    ),
    Case(
        "adam_eps_hat",
        _variant(gradx.adam, eps_hat=True),
        ref.adam_eps_hat,
        {"eps": 1e-3},
        quad=(_decay(3e-2, 500), 3000),
        rosen=(_decay(0.3, 500), 5000),
    ),
    Case(
        "adamw",
        gradx.adamw,
        ref.adamw,
        {"weight_decay": 0.1},
        optax_make=lambda lr: optax.adamw(lr, weight_decay=0.1),
        quad=(_decay(3e-2, 500), 3000),
        rosen=(_decay(0.3, 500), 5000),
        converge_hp={"weight_decay": 1e-4},
    ),
    Case(
        "amsgrad",
        gradx.amsgrad,
        ref.amsgrad,
        quad=(_decay(3e-2, 500), 3000),
        rosen=(_decay(0.3, 500), 5000),
    ),
    Case(
        "adamax",
        gradx.adamax,
        ref.adamax,
        optax_make=optax.adamax,
        quad=(_decay(3e-2, 500), 3000),
        rosen=(_decay(1.0, 2000), 10000),
    ),
    Case(
        "nadam",
        gradx.nadam,
        ref.nadam,
        quad=(_decay(3e-2, 500), 3000),
        rosen=(_decay(0.1, 500), 5000),
    ),
    Case(
        "nadam_optax_convention",
        gradx.nadam,
        ref.nadam,
        {"momentum_decay": None},
        optax_make=optax.nadam,
        quad=(_decay(3e-2, 500), 3000),
        rosen=(_decay(0.3, 500), 5000),
    ),
    Case("rprop", gradx.rprop, ref_sign.rprop, quad=(1e-2, 300), rosen=(1e-2, 8000)),
    Case(
        "lookahead_momentum",
        lambda lr, **hp: gradx.lookahead(gradx.momentum(lr, **hp), sync_period=5, alpha=0.5),
        ref_lookahead.lookahead(ref.momentum, sync_period=5, alpha=0.5),
        {"momentum": 0.8},
        quad=(5e-3, 3000),
        rosen=(1e-3, 10000),
    ),
]
IDS = [c.name for c in CASES]
DTYPES = [np.float32, np.float64]


def _value(lr, t):
    """The learning rate at update t = 1, 2, ... (schedules are evaluated at t - 1)."""
    return float(jax.jit(lr)(jnp.int32(t - 1))) if callable(lr) else lr


# ----------------------------------------------------------------------------- problems

_rng = np.random.default_rng(0)
_Q = _rng.normal(size=(7, 7))
A = _Q @ _Q.T / 7 + np.eye(7)  # symmetric positive definite, condition ~10
B = _rng.normal(size=7)
PARAMS0 = {"b": np.array([[0.5, -1.0], [1.5, 0.2]]), "w": np.array([1.0, -2.0, 0.3])}
FLAT0 = np.asarray(ravel_pytree(PARAMS0)[0])  # the NumPy side stays NumPy


def quadratic_tree(params):
    x, _ = ravel_pytree(params)
    a, b = jnp.asarray(A, x.dtype), jnp.asarray(B, x.dtype)
    return 0.5 * x @ a @ x - b @ x


def ill_quadratic(p):
    return 0.5 * (p[0] ** 2 + 100.0 * p[1] ** 2)


def rosenbrock(p):
    return (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2


def run(opt, loss, params, steps):
    """``steps`` jitted updates in one lax.scan; returns (params, state)."""

    def body(carry, _):
        p, s = carry
        u, s = opt.update(jax.grad(loss)(p), s, p)
        return (optax.apply_updates(p, u), s), None

    (params, state), _ = jax.jit(lambda p, s: jax.lax.scan(body, (p, s), None, length=steps))(
        params, opt.init(params)
    )
    return params, state


def tree_as(tree, dtype):
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


# ----------------------------------------------------------------------------- the seed formulas


def _reference_trajectory(case, lr, dtype, steps):
    a, b = A.astype(dtype), B.astype(dtype)
    theta, state = FLAT0.astype(dtype), {}
    observe = case.observe or (lambda th, st, **hp: th)
    out = []
    for t in range(1, steps + 1):
        theta, state = case.rule(
            theta, state, lambda x: a @ x - b, t, learning_rate=_value(lr, t), **case.hp
        )
        out.append(observe(theta, state, learning_rate=_value(lr, t), **case.hp))
    return np.stack(out)


def _gradx_trajectory(opt, dtype, steps):
    params = tree_as(PARAMS0, dtype)
    state = opt.init(params)
    step = jax.jit(
        lambda p, s: (lambda u, s: (optax.apply_updates(p, u), s))(
            *opt.update(jax.grad(quadratic_tree)(p), s, p)
        )
    )
    out = []
    for _ in range(steps):
        params, state = step(params, state)
        out.append(ravel_pytree(params)[0])
    return np.stack(out)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_seed_formula(case, dtype):
    lr = 0.05
    want = _reference_trajectory(case, lr, dtype, 25)
    got = _gradx_trajectory(case.make(lr, **case.hp), dtype, 25)
    atol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=atol)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_seed_formula_under_a_schedule(case):
    schedule = optax.exponential_decay(0.08, transition_steps=5, decay_rate=0.5)
    want = _reference_trajectory(case, schedule, np.float64, 25)
    got = _gradx_trajectory(case.make(schedule, **case.hp), np.float64, 25)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("case", [c for c in CASES if c.optax_make], ids=lambda c: c.name)
def test_matches_optax_live(case):
    got = _gradx_trajectory(case.make(0.05, **case.hp), np.float32, 25)
    with jax.numpy_dtype_promotion("standard"):  # optax itself relies on implicit promotion
        want = _gradx_trajectory(case.optax_make(0.05), np.float32, 25)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- convergence


@pytest.mark.parametrize(
    "problem, x0, tol",
    [
        ("quad", (1.0, 1.0), 1e-6),
        ("rosen", (-1.2, 1.0), 1e-4),
    ],
)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_converges(case, problem, x0, tol):
    loss = {"quad": ill_quadratic, "rosen": rosenbrock}[problem]
    lr, steps = getattr(case, problem)
    hp = case.hp if case.converge_hp is None else case.converge_hp
    params, _ = run(case.make(lr, **hp), loss, jnp.array(x0), steps)
    assert float(loss(params)) < tol


# ----------------------------------------------------------------------------- JAX transformations


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_no_retrace_on_second_call_or_new_hyperparameters(case):
    opt = case.make(0.1, **case.hp)
    traces = []

    @jax.jit
    def step(params, state):
        traces.append(1)
        updates, state = opt.update(jax.grad(quadratic_tree)(params), state, params)
        return optax.apply_updates(params, updates), state

    params = tree_as(PARAMS0, jnp.float32)
    state = opt.init(params)
    params, state = step(params, state)
    params, state = step(params, state)
    state = gradx.set_hyperparams(state, learning_rate=0.01)
    params, state = step(params, state)
    assert len(traces) == 1
    assert float(gradx.hyperparams(state)["learning_rate"]) == pytest.approx(0.01)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float64])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_keeps_dtypes(case, dtype):
    opt = case.make(0.1, **case.hp)
    params = tree_as(PARAMS0, dtype)
    state = opt.init(params)
    for _ in range(3):
        updates, state = jax.jit(opt.update)(tree_as(PARAMS0, dtype), state, params)
        params = optax.apply_updates(params, updates)
    assert all(x.dtype == dtype for x in jax.tree.leaves((updates, params)))
    want = jnp.float64 if dtype == jnp.float64 else jnp.float32
    floats = [v for v in gradx.hyperparams(state).values() if jnp.issubdtype(v.dtype, jnp.floating)]
    assert floats and all(v.dtype == want for v in floats)
    assert all(np.all(np.isfinite(np.asarray(x, np.float64))) for x in jax.tree.leaves(params))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_jit_equals_eager(case):
    opt = case.make(0.05, **case.hp)
    params = tree_as(PARAMS0, jnp.float64)
    s_eager = s_jit = opt.init(params)
    g = jax.grad(quadratic_tree)(params)
    for _ in range(3):
        u_eager, s_eager = opt.update(g, s_eager, params)
        u_jit, s_jit = jax.jit(opt.update)(g, s_jit, params)
        np.testing.assert_allclose(ravel_pytree(u_jit)[0], ravel_pytree(u_eager)[0], rtol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_vmap_over_learning_rates_equals_separate_runs(case):
    opt = case.make(0.1, **case.hp)
    params = tree_as(PARAMS0, jnp.float32)
    lrs = jnp.array([0.01, 0.05, 0.2], jnp.float32)

    def train(state, opt=opt):
        def step(carry, _):
            p, state = carry
            updates, state = opt.update(jax.grad(quadratic_tree)(p), state, p)
            return (optax.apply_updates(p, updates), state), None

        return jax.lax.scan(step, (params, state), length=12)[0][0]

    states = jax.vmap(lambda lr: gradx.set_hyperparams(opt.init(params), learning_rate=lr))(lrs)
    batched = jax.jit(jax.vmap(train))(states)
    for k, lr in enumerate(lrs):
        opt_k = case.make(float(lr), **case.hp)  # built with this value, not batched
        alone = jax.jit(train, static_argnums=1)(opt_k.init(params), opt_k)
        for got, want in zip(jax.tree.leaves(batched), jax.tree.leaves(alone), strict=True):
            np.testing.assert_allclose(got[k], want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_grad_through_ten_unrolled_steps(case):
    opt = case.make(0.05, **case.hp)
    params = tree_as(PARAMS0, jnp.float64)

    def final_loss(lr, p0):
        state = gradx.set_hyperparams(opt.init(p0), learning_rate=lr)
        p = p0
        for _ in range(10):
            updates, state = opt.update(jax.grad(quadratic_tree)(p), state, p)
            p = optax.apply_updates(p, updates)
        return quadratic_tree(p)

    lr = jnp.float64(0.05)
    d_lr, d_p0 = jax.grad(final_loss, argnums=(0, 1))(lr, params)
    h = 1e-6
    fd = (final_loss(lr + h, params) - final_loss(lr - h, params)) / (2 * h)
    np.testing.assert_allclose(d_lr, fd, rtol=1e-5, atol=1e-8)
    direction = jax.tree.map(jnp.ones_like, params)
    shifted = lambda e: jax.tree.map(lambda x, d: x + e * d, params, direction)
    fd_p = (final_loss(lr, shifted(h)) - final_loss(lr, shifted(-h))) / (2 * h)
    np.testing.assert_allclose(ravel_pytree(d_p0)[0].sum(), fd_p, rtol=1e-5, atol=1e-8)
    assert np.all(np.isfinite(ravel_pytree(d_p0)[0]))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_composes_inside_optax_chain_and_around_optax(case):
    params = tree_as(PARAMS0, jnp.float64)
    g = jax.grad(quadratic_tree)(params)
    clip = optax.clip_by_global_norm(0.5)
    outer = optax.chain(clip, case.make(0.05, **case.hp))
    inner = gradx.chain(case.make(0.05, **case.hp), optax.scale(2.0))
    alone = case.make(0.05, **case.hp)
    u_alone, _ = alone.update(clip.update(g, clip.init(params))[0], alone.init(params), params)
    u_outer, _ = outer.update(g, outer.init(params), params)
    u_inner, _ = inner.update(g, inner.init(params), params)
    np.testing.assert_allclose(ravel_pytree(u_outer)[0], ravel_pytree(u_alone)[0], rtol=1e-12)
    u_plain, _ = alone.update(g, alone.init(params), params)
    np.testing.assert_allclose(ravel_pytree(u_inner)[0], 2 * ravel_pytree(u_plain)[0], rtol=1e-12)
    assert isinstance(case.make(0.05, **case.hp), optax.GradientTransformationExtraArgs)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_empty_and_none_leaves(case):
    opt = case.make(0.1, **case.hp)
    params = {"a": jnp.zeros((0,), jnp.float32), "b": None, "c": jnp.ones(2, jnp.float32)}
    state = opt.init(params)
    updates, state = jax.jit(opt.update)(params, state, params)
    assert updates["a"].shape == (0,) and updates["b"] is None
    assert np.all(np.isfinite(updates["c"]))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradient_tree_mismatch_names_both_structures(case):
    opt = case.make(0.1, **case.hp)
    state = opt.init({"w": jnp.ones(3)})
    with pytest.raises(ValueError, match=r"(?s)gradient tree does not match.*'v'.*'w'.*init"):
        opt.update({"v": jnp.ones(3)}, state, {"w": jnp.ones(3)})


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_negative_learning_rate_is_a_clear_error(case):
    with pytest.raises(ValueError, match=r"learning_rate must be >= 0, got -0\.1"):
        case.make(-0.1, **case.hp)
