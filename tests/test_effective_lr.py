"""gradx.effective_learning_rate against the seeds' α_ef, computed in NumPy from the state.

Seed 001 gives α_ef for every optimizer it shows (EMA momentum α(1−β), bias-corrected
α(1−β)/(1−βᵗ), Adagrad α/(√Σg² + ε), RMSProp α/√(v + ε) or α/(√v̂ + ε), Adam
α(1−β₁)/((1−β₁ᵗ)(√v̂ + ε)), Adamax α(1−β₁)/((1−β₁ᵗ)u), Adadelta α₀√((Δ_{t−1} + ε)/(s_t + ε)));
each reference below is that formula transcribed, reading the statistics (v, G, u, s, Δ) from
the optimizer's state as the test goes. A second, independent check: at step 1 every
statistic starts at zero, so the whole update is −α_ef ⊙ g₁, which the optimizer's own
update must reproduce.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx
from gradx.compat import keras as keras_compat
from gradx.compat import torch as torch_compat

LR = 0.05
STEPS = 6
CHECKED = (1, 2, 3, 5, 6)
SHAPES = {"w": (3, 2), "b": (2,)}


def _grads(dtype, steps=STEPS, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for t in range(steps):
        g = {k: rng.normal(size=s) * (0.5 + t) for k, s in SHAPES.items()}
        g["b"][0] = 0.0 if t == 2 else g["b"][0]  # an exact zero once (rprop, normalize)
        out.append({k: jnp.asarray(v, dtype) for k, v in g.items()})
    return out


def _params(dtype):
    rng = np.random.default_rng(1)
    return {k: jnp.asarray(rng.normal(size=s), dtype) for k, s in SHAPES.items()}


def _np(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


# ----------------------------------------------------------------------------- references
# ref(h, t, state, prev_state, g, prev_g) -> {leaf: α_ef}, h = gradx.hyperparams(state) as floats


def _bc(b, t):
    return 1 - b**t


def _pre(state):
    """The precondition block's state: the first block of the optimizer's chain."""
    return state.inner_state[0]


def _ref_constant(factor):
    return lambda h, t, s, s0, g, g0: {k: np.full(v.shape, factor(h, t)) for k, v in g.items()}


def _ref_adam(eps_root=0.0, eps_hat=False):
    def ref(h, t, s, s0, g, g0):
        nu = _np(_pre(s).by.nu)
        out = {}
        for k, v in nu.items():
            if eps_hat:
                lr_t = h["learning_rate"] * np.sqrt(_bc(h["b2"], t)) / _bc(h["b1"], t)
                out[k] = lr_t * (1 - h["b1"]) / (np.sqrt(v) + h["eps"])
            else:
                v_hat = v / _bc(h["b2"], t)
                den = np.sqrt(v_hat + eps_root) + h["eps"]
                out[k] = h["learning_rate"] * (1 - h["b1"]) / (_bc(h["b1"], t) * den)
        return out

    return ref


def _ref_amsgrad(max_of):
    def ref(h, t, s, s0, g, g0):
        out = {}
        for k, m in _np(_pre(s).by.nu_max).items():
            root = np.sqrt(m) / np.sqrt(_bc(h["b2"], t)) if max_of == "raw_v" else np.sqrt(m)
            out[k] = h["learning_rate"] * (1 - h["b1"]) / (_bc(h["b1"], t) * (root + h["eps"]))
        return out

    return ref


def _ref_adamax(eps_in_max=True):
    def ref(h, t, s, s0, g, g0):
        out = {}
        for k, u in _np(_pre(s).by.u).items():
            den = u if eps_in_max else u + h["eps"]
            out[k] = h["learning_rate"] * (1 - h["b1"]) / (_bc(h["b1"], t) * den)
        return out

    return ref


def _ref_nadam(psi):
    def mu(b1, t):
        return b1 if psi is None else b1 * (1 - 0.5 * 0.96 ** (psi * t))

    def ref(h, t, s, s0, g, g0):
        b1 = h["b1"]
        product = np.prod([mu(b1, i) for i in range(1, t + 1)])
        c_g = (1 - mu(b1, t)) / (1 - product)
        c_m = mu(b1, t + 1) / (1 - product * mu(b1, t + 1))
        out = {}
        for k, v in _np(_pre(s).by.nu).items():
            den = np.sqrt(v / _bc(h["b2"], t)) + h["eps"]
            out[k] = h["learning_rate"] * (c_g + c_m * (1 - b1)) / den
        return out

    return ref


def _ref_rmsprop(eps_in_sqrt=False, bias_correction=False, centered=False):
    def ref(h, t, s, s0, g, g0):
        by = _pre(s).by
        out = {}
        for k, v in _np(by.nu).items():
            if bias_correction:
                v = v / _bc(h["decay"], t)
            if centered:
                v = v - _np(by.mean)[k] ** 2
            den = np.sqrt(v + h["eps"]) if eps_in_sqrt else np.sqrt(v) + h["eps"]
            out[k] = h["learning_rate"] / den
        return out

    return ref


def _ref_adagrad(eps_in_sqrt=False):
    def ref(h, t, s, s0, g, g0):
        out = {}
        for k, total in _np(_pre(s).by.sum_of_squares).items():
            den = np.sqrt(total + h["eps"]) if eps_in_sqrt else np.sqrt(total) + h["eps"]
            out[k] = h["learning_rate"] / den
        return out

    return ref


def _ref_adadelta(h, t, s, s0, g, g0):
    # Seed 001: α₀·√((Δ_{t−1} + ε)/(s_t + ε)): Δ_{t−1} from the state *before* the step.
    s_t, d_prev = _np(s.inner_state[0].e_g), _np(s0.inner_state[0].e_d)
    return {
        k: h["learning_rate"] * np.sqrt((d_prev[k] + h["eps"]) / (s_t[k] + h["eps"])) for k in g
    }


def _ref_rprop(irprop):
    def ref(h, t, s, s0, g, g0):
        out = {}
        for k, step in _np(s.inner_state.step_size).items():
            gk = _np(g)[k]
            flipped = np.sign(gk) * np.sign(_np(s0.inner_state.prev_grad)[k]) < 0
            moved = (gk != 0) & ~(flipped if irprop else False)
            out[k] = np.where(moved, step / np.where(gk != 0, np.abs(gk), 1), 0.0)
        return out

    return ref


def _ref_normalized(h, t, s, s0, g, g0):
    norm = np.sqrt(sum(np.sum(v**2) for v in _np(g).values()))
    return {k: np.full(v.shape, h["learning_rate"] / norm) for k, v in g.items()}


def _ref_lookahead(k, fitted):
    def ref(h, t, s, s0, g, g0):
        if fitted:  # cycles of k + 1 calls; the last takes no inner step
            factor = 0.0 if t % (k + 1) == 0 else h["learning_rate"]
        else:
            factor = h["learning_rate"] * (h["alpha"] if t % k == 0 else 1.0)
        return {name: np.full(v.shape, factor) for name, v in g.items()}

    return ref


def _ema_factor(bias_correction, init="zero"):
    def factor(h, t):
        beta = 0.0 if init == "first" and t == 1 else h["beta"]
        f = h["learning_rate"] * (1 - beta)
        return f / _bc(h["beta"], t) if bias_correction else f

    return factor


CASES = {
    "sgd": (lambda: gradx.sgd(LR), _ref_constant(lambda h, t: h["learning_rate"])),
    "sgd_momentum": (
        lambda: gradx.sgd(LR, momentum=0.9),
        _ref_constant(lambda h, t: h["learning_rate"]),
    ),
    "momentum": (lambda: gradx.momentum(LR), _ref_constant(lambda h, t: h["learning_rate"])),
    "nesterov": (
        lambda: gradx.nesterov(LR, momentum=0.8),
        _ref_constant(lambda h, t: h["learning_rate"] * (1 + h["momentum"])),
    ),
    "ema_momentum": (lambda: gradx.ema_momentum(LR), _ref_constant(_ema_factor(False))),
    "ema_momentum_bc": (
        lambda: gradx.ema_momentum(LR, bias_correction=True),
        _ref_constant(_ema_factor(True)),
    ),
    "ema_momentum_first": (
        lambda: gradx.ema_momentum(LR, ema_init="first"),
        _ref_constant(_ema_factor(False, "first")),
    ),
    "normalized_sgd": (lambda: gradx.normalized_sgd(LR), _ref_normalized),
    "rprop": (lambda: gradx.rprop(LR), _ref_rprop(False)),
    "rprop_irprop": (lambda: gradx.rprop(LR, irprop_minus=True), _ref_rprop(True)),
    "adagrad": (lambda: gradx.adagrad(LR), _ref_adagrad()),
    "adagrad_in": (
        lambda: gradx.adagrad(LR, eps=1e-3, eps_in_sqrt=True, initial_accumulator_value=0.1),
        _ref_adagrad(True),
    ),
    "rmsprop": (lambda: gradx.rmsprop(LR), _ref_rmsprop()),
    "rmsprop_in": (lambda: gradx.rmsprop(LR, eps=1e-3, eps_in_sqrt=True), _ref_rmsprop(True)),
    "rmsprop_bc": (
        lambda: gradx.rmsprop(LR, bias_correction=True),
        _ref_rmsprop(bias_correction=True),
    ),
    "rmsprop_centered": (
        lambda: gradx.rmsprop(LR, centered=True, eps=1e-3),
        _ref_rmsprop(centered=True),
    ),
    "adadelta": (lambda: gradx.adadelta(), _ref_adadelta),
    "adam": (lambda: gradx.adam(LR), _ref_adam()),
    "adam_eps_root": (lambda: gradx.adam(LR, eps_root=1e-3), _ref_adam(eps_root=1e-3)),
    "adam_eps_hat": (lambda: gradx.adam(LR, eps=1e-3, eps_hat=True), _ref_adam(eps_hat=True)),
    "adamw": (lambda: gradx.adamw(LR, weight_decay=0.1), _ref_adam()),
    "amsgrad": (lambda: gradx.amsgrad(LR), _ref_amsgrad("raw_v")),
    "amsgrad_v_hat": (lambda: gradx.amsgrad(LR, max_of="v_hat"), _ref_amsgrad("v_hat")),
    "amsgrad_none": (
        lambda: gradx.amsgrad(LR, max_of="raw_v_no_correction"),
        _ref_amsgrad("raw_v_no_correction"),
    ),
    "adamax": (lambda: gradx.adamax(LR), _ref_adamax()),
    "adamax_keras": (lambda: gradx.adamax(LR, eps=1e-3, eps_in_max=False), _ref_adamax(False)),
    "nadam": (lambda: gradx.nadam(LR), _ref_nadam(0.004)),
    "nadam_optax": (lambda: gradx.nadam(LR, momentum_decay=None), _ref_nadam(None)),
    "lookahead_momentum": (lambda: gradx.lookahead_momentum(LR), _ref_lookahead(5, False)),
    "lookahead_fitted": (lambda: gradx.lookahead_fitted(LR), _ref_lookahead(5, True)),
}


# Newer optimizers whose gain rules are checked against NumPy in their own files; Muon's step is
# not coordinate-wise and is refused by name (tests/test_muon.py).
OWN_FILE = {
    "radam": "test_radam.py",
    "adopt": "test_adopt.py",
    "lion": "test_lion.py",
    "lamb": "test_lamb.py",
    "adafactor": "test_adafactor.py",
    "schedule_free_sgd": "test_schedule_free.py",
    "schedule_free_adamw": "test_schedule_free.py",
    "muon": "test_muon.py",
}


def test_every_gradx_optimizer_has_a_case():
    assert set(gradx.OPTIMIZERS) <= set(CASES) | set(OWN_FILE)
    here = Path(__file__).parent
    for name, file in OWN_FILE.items():  # each named file really tests the gain of that optimizer
        text = (here / file).read_text()
        assert "effective_learning_rate" in text and f"gradx.{name}" in text, (name, file)


def _hyper(state):
    return {k: float(np.asarray(v)) for k, v in gradx.hyperparams(state).items()}


def _run(opt, dtype, check):
    """Steps ``opt`` through the gradient stream; calls check(t, state, prev, g, params, u)."""
    params = _params(dtype)
    state = opt.init(params)
    update = jax.jit(opt.update)
    alpha = jax.jit(lambda s, p, g: gradx.effective_learning_rate(opt, s, p, g))
    for t, g in enumerate(_grads(dtype), start=1):
        value = jnp.sum(params["w"] ** 2) + jnp.asarray(t, dtype)  # for the fitted lookahead
        u, new = update(g, state, params, value=value)
        check(t, new, state, g, params, u, alpha(new, params, g))
        state = new
        params = optax.apply_updates(params, u)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_the_seed_formula(name, dtype):
    build, ref = CASES[name]
    opt = build()
    rtol = 2e-5 if dtype == jnp.float32 else 1e-12
    seen = []

    def check(t, state, prev, g, params, u, alpha):
        assert jax.tree.structure(alpha) == jax.tree.structure(params)
        for leaf in jax.tree.leaves(alpha):
            assert leaf.dtype == dtype
        if t not in CHECKED:
            return
        want = ref(_hyper(state), t, state, prev, g, None)
        got = _np(alpha)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=rtol, atol=0, err_msg=f"{k} t={t}")
        seen.append(t)

    _run(opt, dtype, check)
    assert seen == list(CHECKED)


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_first_step_is_alpha_times_the_gradient(name):
    # From zero statistics, step 1 is −α_ef ⊙ g₁ exactly (AdamW adds −γλθ, the decay term).
    opt = CASES[name][0]()
    params, g = _params(jnp.float64), _grads(jnp.float64)[0]
    state = opt.init(params)
    u, state = opt.update(g, state, params, value=jnp.float64(1.0))
    alpha = gradx.effective_learning_rate(opt, state, params, g)
    h = _hyper(state)
    decay = h.get("weight_decay", 0.0) * h["learning_rate"]
    for k in g:
        want = -np.asarray(u[k]) - decay * np.asarray(params[k])
        np.testing.assert_allclose(np.asarray(alpha[k] * g[k]), want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "build",
    [
        lambda: torch_compat.SGD(lr=0.1, momentum=0.9, dampening=0.5, weight_decay=0.1),
        lambda: torch_compat.Adadelta(lr=1.0, weight_decay=0.1),
        lambda: torch_compat.Adagrad(lr=0.1, lr_decay=0.5),
        lambda: torch_compat.Adam(lr=0.1, maximize=True),
        lambda: keras_compat.Adam(learning_rate=0.1, clipnorm=0.5),
        lambda: keras_compat.SGD(learning_rate=0.1, clipvalue=0.5),
        lambda: keras_compat.SGD(learning_rate=0.1, global_clipnorm=0.5),
        lambda: torch_compat.Adafactor(lr=0.1, eps=(1e-3, 1e-3), maximize=True),
        lambda: keras_compat.Adafactor(learning_rate=0.1, clipnorm=0.5),
    ],
    ids=["torch_sgd", "torch_adadelta_wd", "torch_adagrad", "torch_adam_max", "keras_clipnorm",
         "keras_clipvalue", "keras_global_clipnorm", "torch_adafactor", "keras_adafactor"],
)  # fmt: skip
def test_compat_first_step_is_alpha_times_the_gradient(build):
    # Coupled decay, clipping and maximize act on g before the optimizer's statistics: the
    # step is −α_ef ⊙ g₁, plus −γλθ for torch's coupled decay (a term in θ, not in g).
    opt = build()
    params, g = _params(jnp.float64), _grads(jnp.float64)[0]
    u, state = opt.update(g, opt.init(params), params)
    alpha = gradx.effective_learning_rate(opt, state, params, g)
    h = _hyper(state)
    for k in g:
        decay = h.get("weight_decay", 0.0) * np.asarray(params[k])
        rest = -np.asarray(u[k]) - np.asarray(alpha[k]) * np.asarray(g[k])
        if "weight_decay" in h:  # (α_ef/1)·λθ: the decay went through the same blocks
            np.testing.assert_allclose(rest, np.asarray(alpha[k]) * decay, rtol=1e-12)
        else:
            np.testing.assert_allclose(rest, 0.0, atol=1e-15)


def test_torch_sgd_dampening_keeps_one_minus_d_after_the_first_step():
    opt = torch_compat.SGD(lr=0.1, momentum=0.9, dampening=0.5)
    params, grads = _params(jnp.float64), _grads(jnp.float64)
    state = opt.init(params)
    for g in grads[:2]:
        _, state = opt.update(g, state, params)
    alpha = gradx.effective_learning_rate(opt, state, params)
    np.testing.assert_allclose(np.asarray(alpha["w"]), 0.1 * 0.5, rtol=1e-15)


def test_a_users_own_optimizer_gets_it_for_free():
    @gradx.optimizer(learning_rate=">= 0", b1="[0, 1)", b2="[0, 1)", eps=">= 0")
    def centered_adam(learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8):
        return gradx.chain(
            gradx.precondition(gradx.ema(b1, debias=True), gradx.rms(b2, centered=True), eps=eps),
            gradx.scale_by_learning_rate(learning_rate),
        )

    opt = centered_adam(0.1, eps=1e-3)
    params = _params(jnp.float64)
    state = opt.init(params)
    for g in _grads(jnp.float64)[:3]:
        _, state = opt.update(g, state, params)
    alpha = gradx.effective_learning_rate(opt, state)
    by = _pre(state).by
    for k in params:
        var = np.asarray(by.nu[k]) - np.asarray(by.mean[k]) ** 2  # rms without debias
        want = 0.1 * 0.1 / ((1 - 0.9**3) * (np.sqrt(var) + 1e-3))
        np.testing.assert_allclose(np.asarray(alpha[k]), want, rtol=1e-12)


def test_before_any_step_it_is_zero():
    params = _params(jnp.float32)
    for name in ("adam", "ema_momentum_bc", "nadam", "lookahead_momentum"):
        opt = CASES[name][0]()
        alpha = gradx.effective_learning_rate(opt, opt.init(params), params)
        for leaf in jax.tree.leaves(alpha):
            np.testing.assert_array_equal(np.asarray(leaf), 0.0)


def test_a_schedule_gives_the_value_of_the_last_step():
    opt = gradx.sgd(optax.linear_schedule(1.0, 0.0, 4))
    params = _params(jnp.float32)
    state = opt.init(params)
    for g in _grads(jnp.float32)[:3]:  # steps at counts 0, 1, 2: the last used γ = 0.5
        _, state = opt.update(g, state, params)
    alpha = gradx.effective_learning_rate(opt, state, params)
    np.testing.assert_allclose(np.asarray(alpha["b"]), 0.5, rtol=1e-7)


def test_vmap_over_a_batched_state():
    opt = gradx.adam(0.1)
    params = _params(jnp.float32)
    state = opt.init(params)
    g = _grads(jnp.float32)[0]
    _, state = opt.update(g, state, params)
    lrs = jnp.asarray([0.1, 0.2, 0.4], jnp.float32)
    batched = jax.vmap(lambda lr: gradx.set_hyperparams(state, learning_rate=lr))(lrs)
    alpha = jax.vmap(lambda s: gradx.effective_learning_rate(opt, s, params))(batched)
    single = gradx.effective_learning_rate(opt, state, params)
    assert alpha["w"].shape == (3, *SHAPES["w"])
    np.testing.assert_allclose(np.asarray(alpha["w"][2]), 4 * np.asarray(single["w"]), rtol=1e-6)


def test_refuses_a_bare_optax_transform():
    opt = optax.adam(1e-3)
    params = _params(jnp.float32)
    with pytest.raises(TypeError, match="effective_learning_rate: the block optax's scale_by_adam"):
        gradx.effective_learning_rate(opt, opt.init(params), params)
    with pytest.raises(TypeError, match="optimizer must be an optax GradientTransformation"):
        gradx.effective_learning_rate("adam", None)


def test_says_what_is_missing():
    params, g = _params(jnp.float32), _grads(jnp.float32)[0]
    opt = gradx.normalized_sgd(0.1)
    _, state = opt.update(g, opt.init(params), params)
    with pytest.raises(ValueError, match="normalize block's gain depends on the gradient"):
        gradx.effective_learning_rate(opt, state, params)
    opt = gradx.sgd(0.1)
    with pytest.raises(ValueError, match="pass params="):
        gradx.effective_learning_rate(opt, opt.init(params))


def test_refuses_lookahead_with_reset_state():
    opt = gradx.lookahead(gradx.adam(0.1), reset_state=True)
    params = _params(jnp.float32)
    with pytest.raises(ValueError, match="reset_state=True"):
        gradx.effective_learning_rate(opt, opt.init(params), params)


# ----------------------------------------------------------------------------- fit / sweep


def _problem():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(24, 4)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0], np.float32) > 0).astype(np.float32)
    params = {
        "w": jnp.asarray(rng.normal(size=4) * 0.1, jnp.float32),
        "b": jnp.zeros((), jnp.float32),
    }

    def loss(p, batch):
        xb, yb = batch
        z = xb @ p["w"] + p["b"]
        return jnp.mean(jnp.logaddexp(0.0, z) - yb * z)

    return loss, params, (x, y)


def test_fit_diagnostics_full_batch_match_a_hand_loop():
    loss, params, data = _problem()
    opt = gradx.adam(0.1)
    result = gradx.fit(
        loss, params, opt, data, batch_size=None, epochs=3, key=None, progress=False,
        diagnostics=True,
    )  # fmt: skip
    h = result.history
    state, p = opt.init(params), params
    for epoch in range(3):
        g = jax.grad(loss)(p, data)
        u, state = opt.update(g, state, p)
        new = optax.apply_updates(p, u)
        flat = lambda t: np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in t.values()])
        np.testing.assert_allclose(h["grad_norm"][epoch], np.linalg.norm(flat(g)), rtol=1e-5)
        np.testing.assert_allclose(h["update_norm"][epoch], np.linalg.norm(flat(u)), rtol=1e-5)
        ratio = np.linalg.norm(flat(u)) / np.linalg.norm(flat(new))
        np.testing.assert_allclose(h["update_ratio"][epoch], ratio, rtol=1e-5)
        # α_ef from the seed's Adam formula over all coordinates, quantiles in NumPy.
        t, hp = epoch + 1, _hyper(state)
        nu = flat(_pre(state).by.nu)
        alpha = (
            hp["learning_rate"]
            * (1 - hp["b1"])
            / (_bc(hp["b1"], t) * (np.sqrt(nu / _bc(hp["b2"], t)) + hp["eps"]))
        )
        for q in (10, 50, 90):
            np.testing.assert_allclose(
                h[f"alpha_q{q}"][epoch], np.quantile(alpha, q / 100), rtol=1e-5
            )
        p = new


def test_fit_diagnostics_are_the_last_steps_against_a_hand_loop():
    # normalized GD over 3 minibatches per epoch: α_ef = γ/‖g‖ of the last step (it needs
    # that step's gradient); the hand loop replays fit's documented shuffle.
    loss, params, data = _problem()
    opt, key = gradx.normalized_sgd(0.1), jax.random.key(0)
    h = gradx.fit(
        loss, params, opt, data, batch_size=8, epochs=2, key=key, progress=False,
        diagnostics=True,
    ).history  # fmt: skip
    state, p = opt.init(params), params
    for epoch in range(2):
        order = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), 24))
        for idx in order.reshape(3, 8):
            g = jax.grad(loss)(p, (data[0][idx], data[1][idx]))
            u, state = opt.update(g, state, p)
            p = optax.apply_updates(p, u)
        norm = np.sqrt(sum(float(jnp.sum(x.astype(jnp.float64) ** 2)) for x in g.values()))
        np.testing.assert_allclose(h["grad_norm"][epoch], norm, rtol=1e-5)
        np.testing.assert_allclose(h["update_norm"][epoch], 0.1, rtol=1e-5)
        for q in (10, 50, 90):
            np.testing.assert_allclose(h[f"alpha_q{q}"][epoch], 0.1 / norm, rtol=1e-5)


def test_fit_diagnostics_minibatches_alpha_of_the_final_state():
    loss, params, data = _problem()
    opt = gradx.rmsprop(0.05)
    result = gradx.fit(
        loss, params, opt, data, batch_size=8, epochs=2, key=jax.random.key(1),
        progress=False, diagnostics=True,
    )  # fmt: skip
    alpha = gradx.effective_learning_rate(opt, result.opt_state, result.params)
    values = np.concatenate([np.ravel(np.asarray(v)) for v in jax.tree.leaves(alpha)])
    np.testing.assert_allclose(result.history["alpha_q90"][-1], np.quantile(values, 0.9), rtol=1e-5)
    plain = gradx.fit(
        loss, params, opt, data, batch_size=8, epochs=2, key=jax.random.key(1), progress=False
    )
    assert set(plain.history) == {"loss"}
    np.testing.assert_array_equal(plain.history["loss"], result.history["loss"])


def test_sweep_diagnostics_per_point():
    loss, params, data = _problem()
    opt = gradx.adam(0.01)
    grid = {"learning_rate": np.array([0.01, 0.04], np.float32)}
    result = gradx.sweep(
        loss, params, opt, data, grid, batch_size=None, epochs=2, key=None, progress=False,
        diagnostics=True,
    )  # fmt: skip
    assert result.history["alpha_q50"].shape == (2, 2)
    one = gradx.fit(
        loss, params, gradx.adam(0.04), data, batch_size=None, epochs=2, key=None,
        progress=False, diagnostics=True,
    )  # fmt: skip
    for name in ("grad_norm", "update_norm", "update_ratio", "alpha_q10", "alpha_q90"):
        np.testing.assert_allclose(result.history[name][1], one.history[name], rtol=1e-4)


def test_diagnostics_refusals():
    loss, params, data = _problem()
    with pytest.raises(TypeError, match="fit: diagnostics must be a bool, got 'yes'"):
        gradx.fit(loss, params, gradx.sgd(0.1), data, batch_size=None, epochs=1, key=None,
                  progress=False, diagnostics="yes")  # fmt: skip
    with (
        pytest.raises(TypeError, match="optax's scale_by_adam"),
        jax.numpy_dtype_promotion("standard"),
    ):
        gradx.fit(loss, params, optax.adam(0.1), data, batch_size=None, epochs=1, key=None,
                  progress=False, diagnostics=True)  # fmt: skip
    with pytest.raises(ValueError, match="fit: diagnostics=True works with in-memory data"):
        gradx.fit(loss, params, gradx.sgd(0.1), iter([data]), batch_size=None, epochs=1,
                  key=None, progress=False, diagnostics=True)  # fmt: skip

    def with_aux(p, batch):
        return loss(p, batch), {"grad_norm": jnp.zeros(())}

    with pytest.raises(ValueError, match="aux must not use the name 'grad_norm'"):
        gradx.fit(with_aux, params, gradx.sgd(0.1), data, batch_size=None, epochs=1, key=None,
                  progress=False, diagnostics=True, has_aux=True)  # fmt: skip
    # packed by the user: named, not a missing gain rule of an internal function
    packed = gradx.flat(gradx.adam(0.1))
    with pytest.raises(ValueError, match=r"fit: diagnostics=True reads the optimizer leaf by "
                       r"leaf, got one packed by gradx.flat"):  # fmt: skip
        gradx.fit(loss, params, packed, data, batch_size=None, epochs=1, key=None,
                  progress=False, diagnostics=True)  # fmt: skip
    with pytest.raises(TypeError, match=r"effective_learning_rate: optimizer must run leaf by "
                       r"leaf, got one packed by gradx.flat"):  # fmt: skip
        gradx.effective_learning_rate(packed, packed.init(params), params)


def _every_compat_class():
    for module in (torch_compat, keras_compat):
        for name in module.__all__:
            if module is torch_compat and name == "Muon":
                continue  # not coordinate-wise: refused by name (tests/test_muon.py)
            yield f"{module.__name__}.{name}", getattr(module, name)
    # compat.optax's functions take the learning rate first, as optax's do; its rprop is
    # refused by design (optax's update lags a step: no factor on the current gradient)
    for name in ("sgd", "adam", "adamw", "nadam", "nadamw", "amsgrad", "adamax", "adagrad",
                 "rmsprop", "adadelta"):  # fmt: skip
        yield (
            f"gradx.compat.optax.{name}",
            functools.partial(getattr(gradx.compat.optax, name), 0.01),
        )
    yield "gradx.lion", lambda: gradx.lion(0.01)
    yield "gradx.lamb", lambda: gradx.lamb(0.01, weight_decay=0.01)
    yield (
        "gradx.compat.optax.lookahead",
        lambda: gradx.compat.optax.lookahead(gradx.adam(0.01), sync_period=2, slow_step_size=0.5),
    )


# Variants beside each OPTIMIZERS entry's defaults.
VARIANTS = [
    ("radam(nesterov)", lambda: gradx.radam(0.01, nesterov=True)),
    ("adopt(nesterov, no clip)", lambda: gradx.adopt(0.01, nesterov=True, use_clipping=False)),
    ("schedule_free_adamw(warmup)", lambda: gradx.schedule_free_adamw(0.01, 2, weight_decay=0.1)),
    ("schedule_free_sgd(decay)", lambda: gradx.schedule_free_sgd(0.01, weight_decay=0.1)),
]
# Not coordinate-wise: effective_learning_rate refuses it by name (tested in test_muon.py).
NO_GAIN = {"muon"}
ELEMENTWISE = {n: m for n, m in gradx.OPTIMIZERS.items() if n not in NO_GAIN}


@pytest.mark.parametrize(
    "name, build",
    [
        *((n, lambda m=m: m(0.01)) for n, m in ELEMENTWISE.items()),
        *_every_compat_class(),
        *VARIANTS,
    ],
    ids=[*ELEMENTWISE, *(n for n, _ in _every_compat_class()), *(n for n, _ in VARIANTS)],
)
def test_every_optimizer_and_compat_class_has_its_gain_rules(name, build):
    # The gain rules are found by the code of the blocks' update functions: a block that
    # moved, was renamed or was added without a rule fails here by name, not at a user's call.
    opt = build()
    params, grads = _params(jnp.float32), _grads(jnp.float32)
    state = opt.init(params)
    for g in grads[:3]:
        _, state = opt.update(g, state, params, value=jnp.float32(1.0))
    alpha = gradx.effective_learning_rate(opt, state, params, grads[2])
    assert jax.tree.structure(alpha) == jax.tree.structure(params)
    for k in params:
        assert alpha[k].shape == params[k].shape
        assert np.all(np.isfinite(np.asarray(alpha[k]))), (name, k)
