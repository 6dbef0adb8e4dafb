"""gradx inside the libraries its users train with: optax's wrappers, flax linen, equinox.

Each test runs the same training with a gradx optimizer and with the optax optimizer of the
same rule, inside the client, and compares the numbers (optax run live is the reference).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax.training import train_state

import gradx
import gradx.compat.optax

STEPS = 6


def _grads(k):
    """A fixed stream of gradients for {"w": (3, 2), "b": (2,)}, one per step."""
    rng = np.random.default_rng(k)
    return {
        "w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(2,)), jnp.float32),
    }


PARAMS = {"w": jnp.ones((3, 2), jnp.float32), "b": jnp.zeros((2,), jnp.float32)}


def _run(tx, params=PARAMS, value=None):
    state = tx.init(params)
    tx = optax.with_extra_args_support(tx)
    for k in range(STEPS):
        grads = _grads(k)
        if k == 3:  # one non-finite step, for apply_if_finite
            grads = {**grads, "b": grads["b"].at[0].set(jnp.nan)}
        extra = {} if value is None else {"value": jnp.asarray(value(k), jnp.float32)}
        updates, state = tx.update(grads, state, params, **extra)
        params = optax.apply_updates(params, updates)
    return params


def _finite(tx):
    """Wrappers other than apply_if_finite never see the NaN step."""
    return optax.chain(optax.zero_nans(), tx)


WRAPPERS = {
    "MultiSteps": lambda opt: _finite(optax.MultiSteps(opt, every_k_schedule=2)),
    "masked": lambda opt: _finite(optax.masked(opt, {"w": True, "b": False})),
    "partition": lambda opt: _finite(
        optax.partition({"a": opt, "s": optax.sgd(0.1)}, {"w": "a", "b": "s"})
    ),
    "apply_if_finite": lambda opt: optax.apply_if_finite(opt, max_consecutive_errors=2),
    "flatten": lambda opt: _finite(optax.flatten(opt)),
    "reduce_on_plateau": lambda opt: _finite(
        optax.chain(opt, optax.contrib.reduce_on_plateau(factor=0.5, patience=1))
    ),
}


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
@pytest.mark.parametrize(
    "pair",
    [
        (lambda: gradx.adam(1e-2), lambda: optax.adam(1e-2)),
        (lambda: gradx.momentum(1e-2, 0.9), lambda: optax.sgd(1e-2, 0.9)),
        # the many-leaf path: the wrappers see a FlatState, and masks and partitions give it
        # subtrees to pack
        (lambda: gradx.flat(gradx.adam(1e-2)), lambda: optax.adam(1e-2)),
    ],
    ids=["adam", "momentum", "flat-adam"],
)
def test_optax_wrappers_give_optax_numbers(wrapper, pair):
    ours, theirs = (WRAPPERS[wrapper](make()) for make in pair)
    value = (lambda k: 1.0) if wrapper == "reduce_on_plateau" else None  # a plateau: it cuts
    with jax.numpy_dtype_promotion("standard"):
        got, want = _run(ours, value=value), _run(theirs, value=value)
    for name in PARAMS:
        np.testing.assert_allclose(got[name], want[name], rtol=2e-6, atol=1e-7)
    assert not np.allclose(got["w"], PARAMS["w"])  # something moved


class _Mlp(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2)(jnp.tanh(nn.Dense(8)(x)))


def _linen_fit(tx):
    model = _Mlp()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 3)), jnp.float32)
    y = jnp.sin(x[:, :2])
    params = model.init(jax.random.key(0), x)["params"]
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    @jax.jit
    def step(state):
        def loss(p):
            return jnp.mean((state.apply_fn({"params": p}, x) - y) ** 2)

        return state.apply_gradients(grads=jax.grad(loss)(state.params))

    for _ in range(STEPS):
        state = step(state)
    return state


@pytest.mark.parametrize("make", [gradx.adam, lambda lr: gradx.flat(gradx.adam(lr))],
                         ids=["adam", "flat-adam"])  # fmt: skip
def test_flax_linen_train_state_matches_optax(make):
    with jax.numpy_dtype_promotion("standard"):
        ours, theirs = _linen_fit(make(1e-2)), _linen_fit(optax.adam(1e-2))
    for a, b in zip(jax.tree.leaves(ours.params), jax.tree.leaves(theirs.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)
    assert gradx.hyperparams(ours.opt_state)["learning_rate"] == np.float32(1e-2)


def _equinox_fit(opt, whole=False):
    """equinox's training loop; ``whole``: update gets the whole model, functions included,
    as equinox's own example passes it (``optim.update(grads, opt_state, model)``)."""
    model = eqx.nn.MLP(3, 2, 8, 1, key=jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(1).normal(size=(16, 3)), jnp.float32)
    y = jnp.cos(x[:, :2])
    state = opt.init(eqx.filter(model, eqx.is_array))
    opt = optax.with_extra_args_support(opt)

    @eqx.filter_jit
    def step(model, state):
        def loss(m):
            return jnp.mean((jax.vmap(m)(x) - y) ** 2)

        value, grads = eqx.filter_value_and_grad(loss)(model)
        params = model if whole else eqx.filter(model, eqx.is_array)
        updates, state = opt.update(grads, state, params, value=value)
        return eqx.apply_updates(model, updates), state

    for _ in range(STEPS):
        model, state = step(model, state)
    return model


@pytest.mark.parametrize("make", [gradx.adamw, lambda lr, **kw: gradx.flat(gradx.adamw(lr, **kw))],
                         ids=["adamw", "flat-adamw"])  # fmt: skip
def test_equinox_filtered_training_matches_optax(make):
    with jax.numpy_dtype_promotion("standard"):
        ours = _equinox_fit(make(1e-2, weight_decay=0.1))  # decay reads the params: packed too
        theirs = _equinox_fit(optax.adamw(1e-2, weight_decay=0.1))
    leaves = lambda m: jax.tree.leaves(eqx.filter(m, eqx.is_array))
    for a, b in zip(leaves(ours), leaves(theirs), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


WHOLE_MODEL = {name: lambda f=f: f(1e-2) for name, f in gradx.OPTIMIZERS.items()}
WHOLE_MODEL["flat-adam"] = lambda: gradx.flat(gradx.adam(1e-2))
WHOLE_MODEL["flat-adamw"] = lambda: gradx.flat(gradx.adamw(1e-2, weight_decay=0.1))
WHOLE_MODEL["lookahead-adamw"] = lambda: gradx.lookahead(gradx.adamw(1e-2), sync_period=2)
WHOLE_MODEL["coupled-decay-chain"] = lambda: optax.chain(
    gradx.add_decayed_weights(0.1), gradx.adam(1e-2), gradx.decoupled_weight_decay(0.1, 1e-2)
)


@pytest.mark.parametrize("name", list(WHOLE_MODEL))
def test_equinox_whole_model_as_params(name):
    """equinox's example passes the whole model (activation functions and all) to update:
    optax skips the params whose gradient is None, and so does every gradx optimizer, with
    the numbers of the filtered params, bit for bit."""
    with jax.numpy_dtype_promotion("standard"):
        whole = _equinox_fit(WHOLE_MODEL[name](), whole=True)
        filtered = _equinox_fit(WHOLE_MODEL[name]())
    leaves = lambda m: jax.tree.leaves(eqx.filter(m, eqx.is_array))
    for a, b in zip(leaves(whole), leaves(filtered), strict=True):
        np.testing.assert_array_equal(a, b)


WHOLE_VS_OPTAX = {
    "adam": (lambda: gradx.adam(1e-2), lambda: optax.adam(1e-2)),
    "adamw": (lambda: gradx.adamw(1e-2, weight_decay=0.1),
              lambda: optax.adamw(1e-2, weight_decay=0.1)),
    "compat-optax-adamw": (lambda: gradx.compat.optax.adamw(1e-2), lambda: optax.adamw(1e-2)),
}  # fmt: skip


@pytest.mark.parametrize("name", list(WHOLE_VS_OPTAX))
def test_equinox_whole_model_matches_optax(name):
    ours, theirs = WHOLE_VS_OPTAX[name]
    with jax.numpy_dtype_promotion("standard"):
        ours, theirs = _equinox_fit(ours(), whole=True), _equinox_fit(theirs(), whole=True)
    leaves = lambda m: jax.tree.leaves(eqx.filter(m, eqx.is_array))
    for a, b in zip(leaves(ours), leaves(theirs), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_non_array_params_are_refused_with_their_path_and_the_fix():
    model = eqx.nn.MLP(2, 2, 4, 1, key=jax.random.key(0))
    fix = r"eqx\.filter\(model, eqx\.is_array\)"
    with pytest.raises(TypeError, match=r"adam: params must be arrays, got a .* at "
                       r"params\.activation; .*" + fix):  # fmt: skip
        gradx.adam(1e-2).init(model)
    with pytest.raises(TypeError, match=r"flat: params must be arrays, .*params\.activation"):
        gradx.flat(gradx.adam(1e-2)).init(model)
    # A gradient where the params hold a function: the update would need that param.
    params = {"w": jnp.ones(2, jnp.float32), "f": jnp.ones((), jnp.float32)}
    opt = gradx.adamw(1e-2)
    state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    with pytest.raises(TypeError, match=r"adamw: params must be arrays, got a ufunc at "
                       r"params\['f'\]; .*" + fix):  # fmt: skip
        opt.update(grads, state, {"w": params["w"], "f": np.maximum})
