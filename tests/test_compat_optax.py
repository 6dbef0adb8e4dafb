"""gradx.compat.optax against optax 0.2.8, run live on the same gradients.

Every function has optax's signature (names, order, kinds, defaults), and its trajectory
equals optax's over 25 steps of random gradients (with exact zeros and sign flips) on a pytree
of a matrix, a vector and a scalar, in float32 and float64, with defaults and with each
argument set to something else.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from live_twin import OPTAX_BY_DESIGN

import gradx
import gradx.compat.optax as gx

STEPS = 25


def _grads(dtype):
    """25 gradients: normal, a few exact zeros, and a coordinate that flips sign each step."""
    rng = np.random.default_rng(0)
    out = []
    for k in range(STEPS):
        g = {
            "m": rng.normal(size=(3, 4)),
            "v": rng.normal(size=(5,)) * (rng.random(5) > 0.2),
            "s": np.asarray((-1.0) ** k * 0.5),
        }
        out.append(jax.tree.map(lambda x: jnp.asarray(x, dtype), g))
    return out


def _params(dtype):
    rng = np.random.default_rng(1)
    p = {"m": rng.normal(size=(3, 4)), "v": rng.normal(size=(5,)), "s": np.asarray(0.3)}
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), p)


def _precision(dtype):
    """float32 runs without x64, as optax's users run it: with x64 on (this suite's
    conftest), optax computes 1 − β₂ᵗ from its Python numbers in float64, while gradx keeps
    β₂ as stored, in float32 (the same number only to 1e-5 at t = 2, by cancellation)."""
    return jax.enable_x64(dtype == jnp.float64)


def _trajectory(opt, dtype, lookahead_params=False, scale=1.0):
    params = _params(dtype)
    if lookahead_params:  # optax's lookahead trains a LookaheadParams; we follow .fast
        params = optax.LookaheadParams.init_synced(params)
    state = opt.init(params)
    out = []
    for g in _grads(dtype):
        g = jax.tree.map(lambda x: x * jnp.asarray(scale, dtype), g)
        updates, state = opt.update(g, state, params)
        params = optax.apply_updates(params, updates)
        out.append(params.fast if lookahead_params else params)
    return out


# float32: see test_trajectory_equals_optax; float64, or float32 moments: F64.
F32 = dict(rtol=2e-5, atol=1e-5)
F64 = dict(rtol=1e-12, atol=1e-14)

MASK = {"m": True, "v": False, "s": True}
SCHEDULE = optax.linear_schedule(0.1, 0.01, 20)

# (function, kwargs): defaults first, then each argument away from its default.
CASES = [
    ("sgd", dict(learning_rate=0.1)),
    ("sgd", dict(learning_rate=SCHEDULE, momentum=0.9)),
    ("sgd", dict(learning_rate=0.1, momentum=0.9, nesterov=True)),
    ("sgd", dict(learning_rate=0.1, momentum=0.9, accumulator_dtype=jnp.float32)),
    ("adam", dict(learning_rate=0.1)),
    ("adam", dict(learning_rate=SCHEDULE, b1=0.5, b2=0.9)),
    ("adam", dict(learning_rate=0.1, eps=1e-2, eps_root=1e-3)),
    ("adam", dict(learning_rate=0.1, mu_dtype=jnp.float32)),
    ("adam", dict(learning_rate=0.1, nesterov=True)),
    ("adamw", dict(learning_rate=0.1)),
    ("adamw", dict(learning_rate=0.1, b1=0.5, b2=0.9, eps=1e-2, eps_root=1e-3)),
    ("adamw", dict(learning_rate=SCHEDULE, weight_decay=0.1, mask=MASK)),
    ("adamw", dict(learning_rate=0.1, weight_decay=SCHEDULE, mask=lambda p: MASK)),
    ("adamw", dict(learning_rate=0.1, nesterov=True, mu_dtype=jnp.float32)),
    ("nadam", dict(learning_rate=0.1)),
    ("nadam", dict(learning_rate=0.1, b1=0.5, b2=0.9, eps=1e-2, eps_root=1e-3)),
    ("nadam", dict(learning_rate=SCHEDULE, nesterov=False)),
    ("nadamw", dict(learning_rate=0.1)),
    ("nadamw", dict(learning_rate=0.1, weight_decay=0.1, mask=MASK, nesterov=False)),
    ("adagrad", dict(learning_rate=0.1)),
    ("adagrad", dict(learning_rate=SCHEDULE, initial_accumulator_value=0.0, eps=1e-3)),
    ("rmsprop", dict(learning_rate=0.1)),
    ("rmsprop", dict(learning_rate=SCHEDULE, decay=0.5, eps=1e-3, initial_scale=1.0)),
    ("rmsprop", dict(learning_rate=0.1, eps_in_sqrt=False, centered=True)),
    ("rmsprop", dict(learning_rate=0.1, momentum=0.9, nesterov=True, bias_correction=True)),
    ("adadelta", dict(learning_rate=1.0)),
    ("adadelta", dict(learning_rate=SCHEDULE, rho=0.5, eps=1e-3)),
    ("adadelta", dict(learning_rate=1.0, weight_decay=0.1, weight_decay_mask=MASK)),
    ("adamax", dict(learning_rate=0.1)),
    ("adamax", dict(learning_rate=SCHEDULE, b1=0.5, b2=0.9, eps=1e-2)),
    ("amsgrad", dict(learning_rate=0.1)),
    ("amsgrad", dict(learning_rate=SCHEDULE, b1=0.5, b2=0.9, eps=1e-2)),
    ("amsgrad", dict(learning_rate=0.1, bias_correction_mu=False, mu_dtype=jnp.float32)),
    ("amsgrad", dict(learning_rate=0.1, bias_correction_nu=False)),
    ("rprop", dict(learning_rate=0.1)),
    ("rprop", dict(learning_rate=0.1, eta_minus=0.3, eta_plus=1.5)),
    ("rprop", dict(learning_rate=0.01, min_step_size=5e-3, max_step_size=0.05)),
]


def _id(case):
    name, kwargs = case
    return name + "-" + "-".join(k for k in kwargs if k != "learning_rate")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_trajectory_equals_optax(case, dtype):
    """float64: 1e-12 relative, the same formulas. float32: 2e-5 relative. gradx computes the
    bias correction 1 − βᵗ with a float power of the stored β, optax with an integer power
    (repeated products) of its Python number; the two βᵗ differ in their last ulp from t = 3,
    which the cancellation in 1 − βᵗ (0.003 for β₂ = 0.999) makes 2e-5 of the correction, and
    its root 1e-5 of the step. Without a bias correction (sgd, adagrad, rmsprop, adadelta,
    adamax, rprop) the runs agree to 1e-6. atol covers coordinates that cross 0."""
    name, kwargs = case
    with jax.numpy_dtype_promotion("standard"), _precision(dtype):
        ours = _trajectory(getattr(gx, name)(**kwargs), dtype)
        theirs = _trajectory(getattr(optax, name)(**kwargs), dtype)
    tol = F64 if dtype == jnp.float64 else F32
    if any(k.endswith("_dtype") for k in kwargs):  # float32 moments: float32's rounding
        tol = F32
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        for leaf_a, leaf_b in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            assert leaf_a.dtype == leaf_b.dtype
            np.testing.assert_allclose(leaf_a, leaf_b, **tol, err_msg=str(step))


@pytest.mark.parametrize("reset_state", [False, True])
def test_lookahead_follows_optax_fast_params(reset_state):
    with jax.numpy_dtype_promotion("standard"), _precision(jnp.float32):
        ours = _trajectory(gx.lookahead(gx.adam(0.1), 3, 0.5, reset_state), jnp.float32)
        theirs = _trajectory(
            optax.lookahead(optax.adam(0.1), 3, 0.5, reset_state), jnp.float32, True
        )
    for a, b in zip(ours, theirs, strict=True):
        for leaf_a, leaf_b in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_allclose(leaf_a, leaf_b, **F32)


OPTAX_NAMES = sorted(
    set(gradx.OPTIMIZERS) & set(dir(optax)) - set(OPTAX_BY_DESIGN) | {"lookahead", "nadamw"}
)  # every optax function with a same-named gradx optimizer of the slides, and two more


def test_every_same_named_optimizer_is_covered():
    assert sorted(gx.__all__) == OPTAX_NAMES
    assert {name for name, _ in CASES} | {"lookahead"} == set(OPTAX_NAMES)


@pytest.mark.parametrize("name", OPTAX_NAMES)
def test_signature_is_optax(name):
    """The same parameters in the same order, of the same kind, with the same defaults; then,
    for a function with moments, gradx's keyword-only ``state_dtype`` and
    ``stochastic_rounding`` (how the moments are stored: optax has neither)."""
    ours = dict(inspect.signature(getattr(gx, name)).parameters)
    theirs = inspect.signature(getattr(optax, name)).parameters
    extra = [ours.pop(n) for n in ("state_dtype", "stochastic_rounding") if n in ours]
    if name not in ("rprop", "lookahead"):
        assert [(p.name, p.kind, p.default) for p in extra] == [
            ("state_dtype", inspect.Parameter.KEYWORD_ONLY, None),
            ("stochastic_rounding", inspect.Parameter.KEYWORD_ONLY, False),
        ], name
        last = list(inspect.signature(getattr(gx, name)).parameters)[-2:]
        assert last == ["state_dtype", "stochastic_rounding"], name
    assert list(ours) == list(theirs)
    for p, q in zip(ours.values(), theirs.values(), strict=True):
        assert (p.name, p.kind, p.default) == (q.name, q.kind, q.default), name


@pytest.mark.parametrize("name", OPTAX_NAMES)
def test_docstring_says_which_gradx_optimizer(name):
    doc = getattr(gx, name).__doc__
    assert doc.startswith(f"optax's ``{name}`` reproduced with gradx's blocks, hyperparameters "
                          "in the state")  # fmt: skip


def test_hyperparameters_live_in_the_state_under_optax_names():
    state = gx.adamw(0.1).init(_params(jnp.float32))
    assert gradx.hyperparams(state)["weight_decay"] == np.float32(1e-4)
    state = gradx.set_hyperparams(state, learning_rate=0.01, b1=0.5)
    assert gradx.hyperparams(state)["b1"] == np.float32(0.5)
    state = gx.rprop(0.1).init(_params(jnp.float32))
    assert set(gradx.hyperparams(state)) == {
        "learning_rate",
        "eta_minus",
        "eta_plus",
        "min_step_size",
        "max_step_size",
    }


def test_set_hyperparams_gives_optax_numbers_for_the_new_value():
    """A sweep over the state's b1 equals optax built with that b1."""
    with jax.numpy_dtype_promotion("standard"), _precision(jnp.float32):
        opt = gx.adam(0.1)
        params, grads = _params(jnp.float32), _grads(jnp.float32)
        state = gradx.set_hyperparams(opt.init(params), b1=0.5)
        ref = optax.adam(0.1, b1=0.5)
        ref_state = ref.init(params)
        for g in grads[:5]:
            u, state = opt.update(g, state, params)
            v, ref_state = ref.update(g, ref_state, params)
            for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(v), strict=True):
                np.testing.assert_allclose(a, b, **F32)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: gx.adadelta(), ValueError, r"adadelta: learning_rate must be .* got None"),
        (lambda: gx.amsgrad(0.1, eps_root=1e-8), ValueError, r"amsgrad: eps_root must be 0"),
        (lambda: gx.adam(0.1, b1=1.5), ValueError, r"adam: b1 must be in \[0, 1\), got 1.5"),
        (lambda: gx.adamw(0.1, weight_decay=-1), ValueError, r"adamw: weight_decay must be"),
        (lambda: gx.nadamw(0.1, nesterov=1), TypeError, r"nadamw: nesterov must be a bool"),
        (lambda: gx.rprop(SCHEDULE), TypeError, r"rprop: learning_rate must be a number"),
        (lambda: gx.adam(0.1, mu_dtype=jnp.bfloat16), ValueError,
         r"adam: mu_dtype must be None, float32 or float64, got bfloat16"),
        (lambda: gx.nadamw(0.1, mu_dtype="float16"), ValueError, r"nadamw: mu_dtype must be"),
        (lambda: gx.amsgrad(0.1, mu_dtype=jnp.bfloat16), ValueError, r"amsgrad: mu_dtype"),
        (lambda: gx.sgd(0.1, 0.9, accumulator_dtype=jnp.bfloat16), ValueError,
         r"sgd: accumulator_dtype must be None, float32 or float64"),
        (lambda: gx.rprop(0.1, min_step_size=1.0, max_step_size=0.5), ValueError,
         r"rprop: min_step_size must be <= max_step_size"),
    ],
)  # fmt: skip
def test_arguments_gradx_cannot_reproduce_are_refused(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_rprop_refuses_complex_params_as_gradx_rprop_does():
    # It used to fail at the first update with JAX's "Clip received a complex value".
    params = {"w": jnp.array([1 + 1j, 2 - 1j], jnp.complex64)}
    with pytest.raises(TypeError, match=r"^scale_by_rprop: params must be real, got a complex64"):
        gradx.rprop(0.1).init(params)
    with pytest.raises(TypeError, match=r"^rprop: params must be real, got a complex64 leaf"):
        gx.rprop(0.1).init(params)


def test_lookahead_refuses_optax_lookahead_params():
    opt = gx.lookahead(gx.adam(0.1), 3, 0.5)
    params = optax.LookaheadParams.init_synced(_params(jnp.float32))
    with pytest.raises(TypeError, match=r"lookahead: params must be the fast params"):
        opt.init(params)


def test_optax_defaults_differ_from_gradx_where_the_docs_say():
    """The six optimizers whose gradx defaults give other numbers than optax's, and the four
    that agree: the list on the README's first screen. Gradients of 1e-3, where ε = 1e-8
    inside or outside the root makes a difference (RMSprop)."""
    differ = set()
    for name in ["sgd", "adam", "adamw", "amsgrad", "nadam", "rprop", "adagrad", "rmsprop",
                 "adadelta", "adamax"]:  # fmt: skip
        with jax.numpy_dtype_promotion("standard"), _precision(jnp.float32):
            lr = 1.0 if name == "adadelta" else 0.1
            ours = _trajectory(gradx.OPTIMIZERS[name](learning_rate=lr), jnp.float32, scale=1e-3)
            theirs = _trajectory(getattr(optax, name)(learning_rate=lr), jnp.float32, scale=1e-3)
        gap = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                  zip(jax.tree.leaves(ours[-1]), jax.tree.leaves(theirs[-1]), strict=True))  # fmt: skip
        if gap > 1e-3:
            differ.add(name)
    assert differ == {"adamw", "amsgrad", "nadam", "rprop", "adagrad", "rmsprop"}


@pytest.mark.parametrize("name", [n for n in OPTAX_NAMES if n != "rprop"])
def test_effective_learning_rate_reads_every_compat_optimizer(name, dtype=jnp.float64):
    """gradx.effective_learning_rate walks them: −u = α_ef·g, plus γ·λ·θ for the decay."""
    if name == "lookahead":
        opt = gx.lookahead(gx.adam(0.1), 3, 0.5)
    else:
        opt = getattr(gx, name)(1.0 if name == "adadelta" else 0.1)
    params, g = _params(dtype), _grads(dtype)[0]
    u, state = opt.update(g, opt.init(params), params)
    alpha = gradx.effective_learning_rate(opt, state, params, g)
    h = gradx.hyperparams(state)
    for k in g:
        decay = h.get("weight_decay", 0.0) * h.get("learning_rate", 0.1) * params[k]
        np.testing.assert_allclose(alpha[k] * g[k], -u[k] - decay, rtol=1e-12, atol=1e-15)


def test_effective_learning_rate_refuses_optax_rprop():
    """optax's Rprop update is the last step's move, no factor on the current gradient."""
    opt = gx.rprop(0.1)
    params, g = _params(jnp.float64), _grads(jnp.float64)[0]
    _, state = opt.update(g, opt.init(params), params)
    with pytest.raises(TypeError, match=r"scale_by_rprop .* has no gain rule"):
        gradx.effective_learning_rate(opt, state, params, g)
