"""gradx's constructors against optax's same-named functions (issue items 8, 11 and 18).

A positional argument of a gradx function that shares its name with an optax function must
mean what it means in optax, or be refused (keyword-only): a user porting an optax call
positionally must not get another optimizer. Where gradx's defaults differ from optax's,
the docstring says so and names the ``gradx.compat.optax`` constructor that reproduces optax.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from live_twin import OPTAX_BY_DESIGN

import gradx

# gradx's name for an argument whose optax name differs, for the same quantity.
ALIASES = {
    ("lookahead", "inner"): "fast_optimizer",
    ("lookahead", "alpha"): "slow_step_size",
}

# Re-exported from optax itself: nothing to compare.
REEXPORTS = {"apply_updates", "chain"}


def _twins():
    """Every public gradx function with an optax (or optax.contrib) function of its name."""
    twins = {}
    for name in dir(gradx):
        ours = getattr(gradx, name)
        if name.startswith("_") or name in REEXPORTS or isinstance(ours, type):
            continue
        if not callable(ours):
            continue
        for module in (optax, optax.contrib):
            theirs = getattr(module, name, None)
            if callable(theirs) and not isinstance(theirs, type):
                twins[name] = (ours, theirs)
    return twins


TWINS = _twins()


def _positional(fn):
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [n for n, p in inspect.signature(fn).parameters.items() if p.kind in kinds]


def test_the_twins_are_found():
    # The discovery must not silently find nothing.
    assert set(TWINS) >= {
        "sgd", "adagrad", "rmsprop", "adadelta", "adam", "adamw", "adamax", "amsgrad", "nadam",
        "rprop", "lookahead", "trace", "ema", "add_decayed_weights", "scale_by_learning_rate",
        "scale_by_adadelta", "scale_by_rprop", "normalize",
    }  # fmt: skip


@pytest.mark.parametrize("name", sorted(TWINS))
def test_positional_arguments_mean_what_they_mean_in_optax(name):
    ours, theirs = TWINS[name]
    got = [ALIASES.get((name, n), n) for n in _positional(ours)]
    want = _positional(theirs)
    assert got == want[: len(got)], (
        f"gradx.{name}'s positional arguments {got} are not a prefix of optax.{name}'s {want}: "
        "make the ones past the agreement keyword-only"
    )


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: gradx.adamw(1e-2, 0.8, 0.95, 1e-3, 1e-4), "adamw"),  # optax: 1e-4 is eps_root
        (lambda: gradx.adagrad(1e-2, 0.1, 1e-7), "adagrad"),  # optax: (lr, G0, eps)
        (lambda: gradx.rprop(1e-2, 0.5, 1.2), "rprop"),  # optax: (lr, eta_minus, eta_plus)
        (lambda: gradx.rmsprop(1e-2, 0.9, 1e-8, 0.1), "rmsprop"),  # optax: initial_scale
        (lambda: gradx.nadam(1e-2, 0.9, 0.999, 1e-8, 0.0), "nadam"),  # optax: eps_root
        (lambda: gradx.trace(0.9, False, jnp.float32), "trace"),  # optax: accumulator_dtype
    ],
)
def test_an_optax_call_whose_meaning_differs_is_refused(call, name):
    with pytest.raises(TypeError, match=rf"^{name}(: |\(\) ).*positional"):
        call()


def test_keyword_only_arguments_survive_the_optimizer_decorator():
    @gradx.optimizer(learning_rate=">= 0", beta="[0, 1)")
    def kw_momentum(learning_rate, *, beta=0.9, nesterov: bool = False):
        return gradx.chain(gradx.scale_by_learning_rate(learning_rate), gradx.trace(beta, nesterov))

    params = inspect.signature(kw_momentum).parameters
    assert params["beta"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["nesterov"].kind is inspect.Parameter.KEYWORD_ONLY
    with pytest.raises(TypeError, match=r"^kw_momentum: too many positional arguments"):
        kw_momentum(0.1, 0.5)
    with pytest.raises(ValueError, match=r"^kw_momentum: beta must be in \[0, 1\), got 1.5"):
        kw_momentum(0.1, beta=1.5)
    with pytest.raises(TypeError, match=r"^kw_momentum: nesterov must be a bool, got 'no'"):
        kw_momentum(0.1, nesterov="no")
    opt = kw_momentum(0.1, beta=lambda t: 0.5)  # a schedule for a keyword-only argument
    state = opt.init({"w": jnp.ones(2)})
    updates, state = opt.update({"w": jnp.ones(2)}, state)
    np.testing.assert_allclose(updates["w"], -0.1)
    state = gradx.set_hyperparams(kw_momentum(0.1, beta=0.5).init({"w": jnp.ones(2)}), beta=0.7)
    assert float(gradx.hyperparams(state)["beta"]) == pytest.approx(0.7)
    # gradx's own: the keyword-only arguments are still checked by their rules and flags.
    with pytest.raises(ValueError, match=r"^adamw: weight_decay must be >= 0, got -1"):
        gradx.adamw(1e-3, weight_decay=-1)
    with pytest.raises(TypeError, match=r"^adam: eps_hat must be a bool, got 'no'"):
        gradx.adam(1e-3, eps_hat="no")


# ----------------------------------------------------------------------------- defaults (item 11)

PARAMS = {"a": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array([[0.3, -0.7]])}


def _loss(p):
    return jnp.sum(p["a"] ** 4) + jnp.sum(jnp.sin(3 * p["b"])) + jnp.sum(p["a"][:2] * p["b"][0])


def _run(opt, steps=10):
    params, state = PARAMS, opt.init(PARAMS)
    for _ in range(steps):
        updates, state = opt.update(jax.grad(_loss)(params), state, params)
        params = optax.apply_updates(params, updates)
    return params


OPTIMIZER_TWINS = [
    n for n in gradx.OPTIMIZERS if hasattr(optax, n) and n not in OPTAX_BY_DESIGN
]  # the slides' optimizers that share optax's names
DIFFERING = {"adagrad", "rmsprop", "adamw", "amsgrad", "nadam", "rprop"}


def test_the_optimizers_shared_with_optax_are_the_ten():
    assert OPTIMIZER_TWINS == [
        "sgd", "rprop", "adagrad", "rmsprop", "adadelta", "adam", "adamw", "amsgrad", "adamax",
        "nadam",
    ]  # fmt: skip


def test_the_newer_optimizers_shared_with_optax_run_optax_defaults():
    shared = [n for n in gradx.OPTIMIZERS if hasattr(optax, n)]
    assert shared == OPTIMIZER_TWINS + list(OPTAX_BY_DESIGN)
    for name in OPTAX_BY_DESIGN:
        ours = _run(getattr(gradx, name)(1e-2))
        with jax.numpy_dtype_promotion("standard"):
            theirs = _run(getattr(optax, name)(1e-2))
        for x, y in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
            # float64 params; optax computes Adafactor's decay rate in float32 (2e-10 here)
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-9, err_msg=name)


@pytest.mark.parametrize("name", OPTIMIZER_TWINS)
def test_a_default_that_differs_from_optax_is_documented(name):
    ours = _run(getattr(gradx, name)(1e-2))
    with jax.numpy_dtype_promotion("standard"):  # optax mixes float64 with int32 counts
        theirs = _run(getattr(optax, name)(1e-2))
    gap = max(
        float(jnp.max(jnp.abs(x - y)))
        for x, y in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True)
    )
    doc = getattr(gradx, name).__doc__
    if name in DIFFERING:
        assert gap > 1e-9, f"gradx.{name}'s defaults now give optax's numbers"
        assert "optax's default differs" in doc
        assert f"gradx.compat.optax.{name}(" in doc
    else:
        assert gap < 1e-12, f"gradx.{name}'s defaults no longer give optax's numbers"
        assert "optax's default differs" not in doc


# ----------------------------------------------------------------------------- accumulator_dtype


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("steps", [1, 5])
def test_sgd_takes_optax_accumulator_dtype_and_matches_optax(nesterov, steps):
    params = {"w": jnp.array([1.0, -2.0, 0.5], jnp.float32)}

    def loss(p):
        return jnp.sum(p["w"] ** 2)

    def run(opt):
        p, state = params, opt.init(params)
        for _ in range(steps):
            updates, state = opt.update(jax.grad(loss)(p), state, p)
            p = optax.apply_updates(p, updates)
        return p, state

    ours, state = run(gradx.sgd(0.01, 0.9, nesterov, jnp.bfloat16))  # optax's positions
    with jax.numpy_dtype_promotion("standard"):  # optax adds bf16 to float32
        theirs, their_state = run(
            optax.sgd(0.01, momentum=0.9, nesterov=nesterov, accumulator_dtype=jnp.bfloat16)
        )
    (velocity,) = jax.tree.leaves(state.inner_state[0])[1:]
    (their_velocity,) = jax.tree.leaves(their_state[0].trace)
    assert velocity.dtype == their_velocity.dtype == jnp.bfloat16
    velocity, their_velocity = (np.asarray(v, np.float32) for v in (velocity, their_velocity))
    if steps == 1:  # v₁ = g rounded to bf16 in both: bit for bit
        np.testing.assert_array_equal(velocity, their_velocity)
        np.testing.assert_array_equal(ours["w"], theirs["w"])
    else:  # optax rounds μ·v to bf16 before adding g; gradx adds in float32 (fewer roundings)
        np.testing.assert_allclose(velocity, their_velocity, rtol=3e-2)
        np.testing.assert_allclose(ours["w"], theirs["w"], rtol=3e-3)


@pytest.mark.parametrize("make", [gradx.sgd, gradx.momentum, gradx.nesterov])
def test_accumulator_dtype_and_mu_dtype_name_one_buffer(make):
    name = make.__name__
    kwargs = {"momentum": 0.9} if name == "sgd" else {}
    for spelling in ("accumulator_dtype", "mu_dtype"):
        opt = make(0.1, **kwargs, **{spelling: jnp.bfloat16})
        state = opt.init({"w": jnp.ones(3, jnp.float32)})
        buffers = [x for x in jax.tree.leaves(state.inner_state) if x.shape == (3,)]
        assert [b.dtype for b in buffers] == [jnp.bfloat16]
    with pytest.raises(TypeError, match=rf"^{name}: accumulator_dtype and mu_dtype name the same"):
        make(0.1, **kwargs, accumulator_dtype=jnp.bfloat16, mu_dtype=jnp.float32)
    with pytest.raises(TypeError, match=rf"^{name}: accumulator_dtype must be a real floating"):
        make(0.1, **kwargs, accumulator_dtype="int8")
