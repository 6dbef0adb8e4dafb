"""The @optimizer contract under misuse and inside other libraries (issue 11).

optax.inject_hyperparams, flax nnx, pickle, orbax and msgpack round trips; params and
gradients of the wrong kind or shape; values that round when stored; rules owned by one
optimizer; runtime checks of values that go bad after construction; and the dtype of the
updates.
"""

import functools
import inspect
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import checkify

import gradx

P = {"w": jnp.array([1.0, -2.0, 3.0], jnp.float32), "b": jnp.array(0.5, jnp.float32)}
G = {"w": jnp.array([0.1, 0.2, -0.3], jnp.float32), "b": jnp.array(-0.4, jnp.float32)}


def _update(opt, grads, state, params):
    # lookahead_fitted needs the loss; every other optimizer ignores it.
    value = jnp.asarray(1.0, jnp.float32)
    return optax.with_extra_args_support(opt).update(grads, state, params, value=value)


# ----------------------------------------------------------------------------- item 1


INJECTED = {
    "adam": (gradx.adam, optax.adam, {}),
    "rmsprop": (gradx.rmsprop, functools.partial(optax.rmsprop, eps_in_sqrt=False), {}),
    "sgd": (gradx.sgd, optax.sgd, {}),
}


def _injected_run(make, learning_rate, kwargs, jit, change):
    opt = optax.inject_hyperparams(make)(learning_rate=learning_rate, **kwargs)
    state = opt.init(P)
    update = jax.jit(opt.update) if jit else opt.update
    out = []
    for t in range(5):
        if t in change:
            state.hyperparams["learning_rate"] = jnp.asarray(change[t], jnp.float32)
        updates, state = update(G, state, P)
        out.append(np.concatenate([np.ravel(u) for u in jax.tree.leaves(updates)]))
    return np.stack(out)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", list(INJECTED))
def test_inject_hyperparams_follows_a_changed_value_like_optax(name, jit):
    ours, theirs, kwargs = INJECTED[name]
    change = {2: 0.5, 4: 0.0}
    with jax.numpy_dtype_promotion("standard"):
        want = _injected_run(theirs, 1e-2, kwargs, jit, change)
    got = _injected_run(ours, 1e-2, kwargs, jit, change)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-9)
    assert np.all(got[4] == 0)  # the learning rate set to 0 at step 4 is used


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", list(INJECTED))
def test_inject_hyperparams_follows_a_warmup_schedule_like_optax(name, jit):
    ours, theirs, kwargs = INJECTED[name]
    warmup = optax.linear_schedule(0.0, 0.1, transition_steps=4)
    with jax.numpy_dtype_promotion("standard"):
        want = _injected_run(theirs, warmup, kwargs, jit, {})
    got = _injected_run(ours, warmup, kwargs, jit, {})
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-9)
    assert np.all(got[0] == 0) and np.all(got[4] != 0)


def test_a_hyperparameter_given_as_a_jax_array_is_injected_and_cannot_be_set_by_hand():
    opt = gradx.sgd(jnp.asarray(0.25, jnp.float32))
    state = opt.init(P)
    updates, state = opt.update(G, state)
    np.testing.assert_allclose(updates["w"], -0.25 * np.asarray(G["w"]), rtol=1e-6)
    assert float(gradx.hyperparams(state)["learning_rate"]) == 0.25
    with pytest.raises(ValueError, match=r"'learning_rate' follows a schedule or a value given"):
        gradx.set_hyperparams(state, learning_rate=0.1)
    inner = optax.inject_hyperparams(gradx.adam)(learning_rate=0.1).init(P).inner_state
    with pytest.raises(ValueError, match=r"Build the optimizer with a Python number"):
        gradx.set_hyperparams(inner, learning_rate=0.2)
    # Python and NumPy numbers keep sharing one update function.
    assert gradx.adam(np.float32(1e-3)).update is gradx.adam(0.1).update


# ----------------------------------------------------------------------------- item 3


def test_nnx_set_hyperparams_keeps_the_opt_array_checkpoints_it_and_does_not_retrace():
    from flax import nnx

    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, gradx.adam(1e-3), wrt=nnx.Param)
    x = jnp.ones((4, 3), jnp.float32)
    traces = []

    @nnx.jit
    def step(model, optimizer):
        traces.append(1)
        grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
        optimizer.update(model, grads)

    step(model, optimizer)
    optimizer.opt_state = gradx.set_hyperparams(optimizer.opt_state, learning_rate=0.5)
    assert isinstance(optimizer.opt_state.hyperparams["learning_rate"], nnx.OptArray)
    saved = nnx.state(optimizer, nnx.OptState)
    assert float(saved["opt_state"]["hyperparams"]["learning_rate"][...]) == 0.5

    # The step uses 0.5, as plain gradx does on the same arrays, without a new trace.
    params = nnx.as_pure(nnx.state(model, nnx.Param))
    grads = nnx.as_pure(nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model))
    want, _ = gradx.adam(1e-3).update(grads, nnx.as_pure(optimizer.opt_state), params)
    step(model, optimizer)
    assert len(traces) == 1
    moved = jax.tree.map(lambda a, b: a - b, nnx.as_pure(nnx.state(model, nnx.Param)), params)
    jax.tree.map(lambda m, w: np.testing.assert_allclose(m, w, rtol=1e-5), moved, want)

    # Restoring the checkpointed state into a fresh optimizer brings the learning rate back.
    fresh = nnx.Optimizer(model, gradx.adam(1e-3), wrt=nnx.Param)
    nnx.update(fresh, saved)
    assert float(gradx.hyperparams(fresh.opt_state)["learning_rate"][...]) == 0.5


def test_nnx_optimizer_trains_int8_states_and_param_groups_as_plain_gradx_does():
    # nnx.Optimizer gives init Params (Variables) and update plain arrays: an int8 moment
    # (codes and scales) must not sit inside one Variable, and a group's pattern must match
    # the same key path at init and update ("bias", not "bias/value")
    from flax import nnx

    x = jnp.ones((2, 4), jnp.float32)
    builds = {
        "int8": lambda: gradx.adam(1e-2, state_dtype="int8"),
        "groups": lambda: gradx.param_groups(
            gradx.adamw(1e-2, weight_decay=0.1), no_decay=(r"(^|/)bias$", {"weight_decay": 0.0})
        ),
    }
    for name, make in builds.items():
        model = nnx.Linear(4, 300, rngs=nnx.Rngs(0))
        params = nnx.as_pure(nnx.state(model, nnx.Param))
        optimizer = nnx.Optimizer(model, make(), wrt=nnx.Param)

        @nnx.jit
        def step(model, optimizer):
            optimizer.update(model, nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model))

        plain, state = make(), make().init(params)
        for _ in range(3):
            step(model, optimizer)
            grads = jax.grad(lambda p: jnp.mean((x @ p["kernel"] + p["bias"][None]) ** 2))(params)
            updates, state = jax.jit(plain.update)(grads, state, params)
            params = optax.apply_updates(params, updates)
        got = nnx.as_pure(nnx.state(model, nnx.Param))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(params), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=name)


# ----------------------------------------------------------------------------- items 4 and 10

EVERY = gradx.OPTIMIZERS
OPTIMIZERS = sorted(EVERY)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_integer_params_and_gradients_are_refused_naming_the_leaf(name):
    opt = EVERY[name](0.1)
    params = {"w": jnp.ones(3, jnp.float32), "n": jnp.arange(3, dtype=jnp.int32)}
    with pytest.raises(
        TypeError, match=r"params must be floating or complex.*int32 at params\['n'\]"
    ):
        opt.init(params)
    state = opt.init(P)
    grads = {"w": jnp.ones(3, jnp.int32), "b": G["b"]}
    with pytest.raises(TypeError, match=r"gradients must be .*int32 at gradients\['w'\]"):
        _update(opt, grads, state, P)


@pytest.mark.parametrize("name", ["sgd", "adam", "rmsprop", "adagrad", "nadam"])
def test_complex_params_are_allowed(name):
    params = {"w": jnp.array([1 + 1j, -2j], jnp.complex64)}
    opt = EVERY[name](0.1)
    updates, _ = opt.update(params, opt.init(params), params)
    assert updates["w"].dtype == jnp.complex64
    assert np.all(np.isfinite(np.asarray(updates["w"])))


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_gradient_of_the_wrong_shape_is_a_tree_mismatch_naming_path_and_shapes(name, jit):
    opt = EVERY[name](0.1)
    state = opt.init(P)
    grads = {"w": G["w"][:, None], "b": G["b"]}  # (3, 1) would broadcast params to (3, 3)
    update = jax.jit(functools.partial(_update, opt)) if jit else functools.partial(_update, opt)
    message = r"gradient at \['w'\] has shape \(3, 1\), but the .* there has shape \(3,\)"
    with pytest.raises(gradx.TreeMismatchError, match=message):
        update(grads, state, P)


def test_a_gradient_of_the_wrong_shape_is_caught_against_the_state_without_params():
    opt = gradx.adam(0.1)
    with pytest.raises(gradx.TreeMismatchError, match=r"adam: the gradient at \['w'\] has shape"):
        opt.update({"w": G["w"][:, None], "b": G["b"]}, opt.init(P))


# ----------------------------------------------------------------------------- A5


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_python_float_params_work_as_arrays_do(name):
    opt = EVERY[name](0.1)
    as_array = jnp.asarray(1.5, jnp.asarray(1.5).dtype)
    got, _ = _update(opt, 0.25, opt.init(1.5), 1.5)
    want, _ = _update(opt, jnp.asarray(0.25, as_array.dtype), opt.init(as_array), as_array)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def _flags(constructor):
    """The arguments annotated ``bool`` (annotations are strings in gradx's modules)."""
    parameters = inspect.signature(constructor).parameters
    return [n for n, p in parameters.items() if p.annotation in ("bool", bool)]


@pytest.mark.parametrize(
    "name, flag",
    [(n, f) for n in OPTIMIZERS for f in _flags(EVERY[n])],
)
def test_boolean_flags_refuse_strings_and_numbers(name, flag):
    with pytest.raises(TypeError, match=rf"{name}: {flag} must be a bool, got 'false'"):
        EVERY[name](0.1, **{flag: "false"})
    with pytest.raises(TypeError, match=rf"{name}: {flag} must be a bool, got 1"):
        EVERY[name](0.1, **{flag: 1})
    EVERY[name](0.1, **{flag: np.bool_(False)})


def test_update_refuses_a_state_built_by_another_optimizer():
    with pytest.raises(TypeError, match=r"adam: state must be .* got built by nadam"):
        gradx.adam(0.1).update(G, gradx.nadam(0.1).init(P))
    with pytest.raises(TypeError, match=r"sgd: state must be .* got built by rprop"):
        gradx.sgd(0.1).update(G, gradx.rprop(0.1).init(P))
    scheduled = gradx.adam(optax.constant_schedule(0.1)).init(P)
    with pytest.raises(TypeError, match=r"adam: .* built by a adam with other settings"):
        gradx.adam(0.1).update(G, scheduled)


# ----------------------------------------------------------------------------- A1


def test_set_hyperparams_checks_the_owning_optimizers_rule_only():
    # torch's SGD allows momentum >= 0; gradx.momentum's [0, 1) must not apply to it.
    state = gradx.compat.torch.SGD(0.1, momentum=0.9).init(P)
    state = gradx.set_hyperparams(state, momentum=1.5)
    assert float(gradx.hyperparams(state)["momentum"]) == 1.5
    with pytest.raises(ValueError, match=r"set_hyperparams: momentum must be in \[0, 1\)"):
        gradx.set_hyperparams(gradx.momentum(0.1).init(P), momentum=1.5)


def test_a_stricter_user_optimizer_does_not_change_adams_rules():
    @gradx.optimizer(learning_rate="[0, 0.01]", b1="(0.5, 0.6)")
    def strict(learning_rate=1e-3, b1=0.55):
        return gradx.scale_by_learning_rate(learning_rate)

    with pytest.raises(ValueError, match=r"strict: learning_rate must be in \[0, 0\.01\]"):
        strict(0.5)
    state = gradx.set_hyperparams(gradx.adam(1e-3).init(P), learning_rate=0.5, b1=0.9)
    assert float(gradx.hyperparams(state)["learning_rate"]) == 0.5

    def loss_fn(params, batch):
        return jnp.mean((batch["x"] * params["w"][0]) ** 2)

    data = {"x": jnp.ones(4, jnp.float32)}
    result = gradx.sweep(
        loss_fn,
        {"w": jnp.ones(1, jnp.float32)},
        gradx.adam(1e-3),
        data,
        {"learning_rate": np.array([0.05, 0.5])},
        batch_size=None,
        epochs=1,
        key=None,
        progress=False,
    )
    assert len(result) == 2


def test_states_round_trip_through_pickle_msgpack_and_orbax(tmp_path):
    from flax import serialization

    opt = gradx.adam(1e-3)
    state = opt.init(P)
    _, state = opt.update(G, state)
    state = gradx.set_hyperparams(state, learning_rate=0.25)
    want, _ = opt.update(G, state)

    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "state", state)
    with ocp.StandardCheckpointer() as checkpointer:
        from_orbax = checkpointer.restore(tmp_path / "state", state)
    restored = {
        "pickle": pickle.loads(pickle.dumps(state)),
        "msgpack": serialization.from_bytes(state, serialization.to_bytes(state)),
        "orbax": from_orbax,
    }
    for how, back in restored.items():
        assert type(back) is type(state), how
        got, _ = opt.update(G, back)
        jax.tree.map(np.testing.assert_array_equal, got, want)


# ----------------------------------------------------------------------------- A2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"b1": 1 - 1e-10},
            r"adam: b1 must be in \[0, 1\), got 0\.9999999999, which rounds to 1\.0 in float32",
        ),
        (
            {"b2": 1 - 1e-9},
            r"adam: b2 must be in \[0, 1\), got 0\.999999999, which rounds to 1\.0 in float32",
        ),
        (
            {"learning_rate": 1e39},
            r"adam: learning_rate must be >= 0, got 1e\+39, which rounds to inf in float32",
        ),
    ],
)
def test_values_are_checked_as_stored_in_float32(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gradx.adam(**{"learning_rate": 1e-3, **kwargs})


def test_set_hyperparams_checks_the_value_in_the_states_dtype():
    with pytest.raises(
        ValueError,
        match=r"b1 must be in \[0, 1\), got 0\.9999999999, which rounds to 1\.0 in float32",
    ):
        gradx.set_hyperparams(gradx.adam(1e-3).init(P), b1=1 - 1e-10)
    wide = gradx.set_hyperparams(gradx.adam(1e-3).init({"w": jnp.ones(2)}), b1=1 - 1e-10)  # float64
    assert float(gradx.hyperparams(wide)["b1"]) == 1 - 1e-10
    with pytest.raises(
        ValueError,
        match=r"sync_period must be an integer >= 1, got 4294967296, which does not fit in int32",
    ):
        gradx.set_hyperparams(gradx.lookahead(gradx.sgd(0.1)).init(P), sync_period=2**32)


# Every optimizer's own constructor (lookahead_* name the inner momentum in their errors).
OWN = [n for n in OPTIMIZERS if not n.startswith("lookahead")]


BAD_LEARNING_RATES = [
    (
        "np-complex",
        np.complex64(1e-3),
        TypeError,
        r"must be a real number >= 0, got the complex np",
    ),
    (
        "complex",
        1e-3 + 0j,
        TypeError,
        r"must be a real number >= 0, got the complex \(0\.001\+0j\)",
    ),
    ("None", None, TypeError, r"must be a number >= 0 or a schedule, got None"),
    (
        "10**400",
        10**400,
        ValueError,
        r"must be >= 0, got an integer of 401 digits, which overflows",
    ),
    ("str", "1e-3", TypeError, r"must be a number >= 0, got '1e-3'"),
    ("vector", np.full(3, 1e-3), ValueError, r"must be a scalar, got shape \(3,\)"),
]
# None is optax's default learning rate of adafactor (γ = 1: the step is RMS(θ)·û).
LEARNING_RATE_MAY_BE_NONE = {"adafactor"}


@pytest.mark.parametrize(
    "name, value, error, message",
    [
        pytest.param(name, value, error, message, id=f"{name}-{case}")
        for name in OWN
        for case, value, error, message in BAD_LEARNING_RATES
        if not (value is None and name in LEARNING_RATE_MAY_BE_NONE)
    ],
)
def test_a_learning_rate_that_is_not_a_real_scalar_is_refused_naming_it(
    name, value, error, message
):
    with pytest.raises(error, match=rf"^{name}: learning_rate {message}"):
        EVERY[name](value)


def test_none_is_taken_only_where_it_switches_a_feature_off():
    gradx.sgd(0.1, None)  # momentum=None: plain gradient descent
    gradx.nadam(0.1, momentum_decay=None)  # optax's nadam
    with pytest.raises(TypeError, match=r"^adam: b1 must be a number in \[0, 1\) .*got None"):
        gradx.adam(1e-3, None)
    with pytest.raises(TypeError, match=r"^lookahead: sync_period must be .*got None"):
        gradx.lookahead(gradx.sgd(0.1), None)


def test_a_complex_value_is_refused_by_set_hyperparams():
    state = gradx.adam(1e-3).init(P)
    with pytest.raises(TypeError, match=r"^set_hyperparams: b1 must be a real number"):
        gradx.set_hyperparams(state, b1=np.complex64(0.9))


def test_a_vector_is_refused_by_set_hyperparams_as_by_the_constructor():
    with pytest.raises(ValueError, match=r"^sgd: learning_rate must be a scalar, got shape \(1,\)"):
        gradx.sgd(np.array([0.1]))
    state = gradx.sgd(0.1).init(P)
    with pytest.raises(
        ValueError,
        match=r"^set_hyperparams: learning_rate must be a scalar >= 0, got array\(\[0\.1\]\) of "
        r"shape \(1,\); batch hyperparameters with gradx.set_hyperparams under jax.vmap$",
    ):
        gradx.set_hyperparams(state, learning_rate=np.array([0.1]))
    with pytest.raises(ValueError, match=r"^set_hyperparams: b1 must be a scalar in \[0, 1\), "):
        gradx.set_hyperparams(gradx.adam(1e-3).init(P), b1=jnp.full((2, 2), 0.9))
    one = gradx.set_hyperparams(state, learning_rate=np.array(0.2))  # 0-d: a scalar
    assert gradx.hyperparams(one)["learning_rate"].shape == ()
    # under vmap each point is a scalar: a batch of states, which takes a vector of its shape
    lrs = jnp.array([0.1, 0.2], jnp.float32)
    batched = jax.vmap(lambda lr: gradx.set_hyperparams(state, learning_rate=lr))(lrs)
    np.testing.assert_array_equal(gradx.hyperparams(batched)["learning_rate"], lrs)
    again = gradx.set_hyperparams(batched, learning_rate=np.array([0.3, 0.4]))
    np.testing.assert_array_equal(gradx.hyperparams(again)["learning_rate"], np.float32([0.3, 0.4]))


def test_a_schedule_that_returns_a_vector_is_refused_not_broadcast():
    with pytest.raises(
        ValueError, match=r"^adam: learning_rate's schedule must return a scalar, got shape \(3,\)"
    ):
        gradx.adam(lambda count: jnp.full(3, 1e-3))
    # Scalar at step 0 in Python, a vector once traced: refused when update is traced.
    opt = gradx.adam(lambda count: 1e-3 if isinstance(count, int) else jnp.full(3, 1e-3))
    state = opt.init({"w": jnp.ones(3)})
    with pytest.raises(
        ValueError, match=r"^adam: learning_rate's schedule must return a scalar, got shape \(3,\)"
    ):
        jax.jit(opt.update)({"w": jnp.ones(3)}, state)


# ----------------------------------------------------------------------------- A3


def _checked_steps(opt, steps, state=None):
    """The checkify error after each of ``steps`` jitted updates."""
    state = opt.init(P) if state is None else state
    step = checkify.checkify(jax.jit(opt.update))
    errors = []
    for _ in range(steps):
        err, (_, state) = step(G, state, P)
        errors.append(err.get())
    return errors


@pytest.mark.parametrize("bad", [float("nan"), -0.1])
def test_runtime_checks_catch_a_schedule_that_goes_bad(bad):
    schedule = lambda count: jnp.where(count >= 2, bad, 0.1)
    opt = gradx.sgd(schedule)
    with gradx.check_hyperparams():
        errors = _checked_steps(opt, 3)
    assert errors[:2] == [None, None]
    assert "sgd: learning_rate (its schedule's value at step 2) must be >= 0" in errors[2]
    # Off (the default), a program traced afterwards has no check and runs on. (A new
    # function: jax.jit would reuse the program traced above for the same one.)
    assert not any(_checked_steps(gradx.sgd(lambda count: schedule(count)), 3))


def test_runtime_checks_catch_traced_values_given_to_set_hyperparams():
    opt = gradx.adam(1e-3)

    def step(b1, state):
        return opt.update(G, gradx.set_hyperparams(state, b1=b1), P)

    with gradx.check_hyperparams():
        checked = jax.jit(checkify.checkify(step))
        err, _ = checked(jnp.float32(0.5), opt.init(P))
        assert err.get() is None
        err, _ = checked(jnp.float32(1.0), opt.init(P))
        assert "adam: b1 (at step 0) must be in [0, 1), got 1.0" in err.get()
        # Batched hyperparameters (a sweep) are checked point by point.
        batched = jax.vmap(lambda b1: gradx.set_hyperparams(opt.init(P), b1=b1))
        states = batched(jnp.array([0.5, 1.5], jnp.float32))
        err, _ = jax.jit(checkify.checkify(jax.vmap(lambda s: opt.update(G, s, P))))(states)
        assert "got 1.5" in err.get()


def test_rprop_step_bounds_are_checked_when_set_later():
    opt = gradx.rprop(0.1, min_step=0.01, max_step=1.0)
    with pytest.raises(ValueError, match=r"rprop: min_step must be <= max_step \(1\.0\), got 2\.0"):
        gradx.rprop(0.1, min_step=2.0, max_step=1.0)
    with pytest.raises(ValueError, match=r"set_hyperparams: min_step must be <= max_step \(0\.005"):
        gradx.set_hyperparams(opt.init(P), max_step=0.005)
    traced = jax.jit(lambda hi: gradx.set_hyperparams(opt.init(P), max_step=hi))(0.005)
    with gradx.check_hyperparams():
        (error,) = _checked_steps(opt, 1, traced)
    assert "rprop: min_step must be <= max_step (0.004999" in error


def test_check_hyperparams_switch_is_a_function_and_a_context_manager():
    from gradx._protocol.checks import RUNTIME_CHECKS

    assert RUNTIME_CHECKS["on"] is False
    with gradx.check_hyperparams():
        assert RUNTIME_CHECKS["on"] is True
        with gradx.check_hyperparams(False):
            assert RUNTIME_CHECKS["on"] is False
        assert RUNTIME_CHECKS["on"] is True
    assert RUNTIME_CHECKS["on"] is False
    opt = gradx.sgd(0.1)
    state = opt.init(P)
    bad = state._replace(hyperparams={"learning_rate": jnp.float32(-1.0)})  # as a tracer could
    gradx.check_hyperparams(True)
    try:  # eager, without checkify: a failed check raises at once
        with pytest.raises(checkify.JaxRuntimeError, match=r"sgd: learning_rate \(at step 0\)"):
            opt.update(G, bad)
    finally:
        gradx.check_hyperparams(False)
    opt.update(G, bad)  # off again: no check
    with pytest.raises(TypeError, match=r"check_hyperparams: enabled must be a bool, got 'yes'"):
        gradx.check_hyperparams("yes")


# ----------------------------------------------------------------------------- A4 (dtype)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_updates_have_the_gradients_dtype(name, dtype):
    opt = EVERY[name](0.1)
    params = jax.tree.map(lambda x: x.astype(dtype), P)
    grads = jax.tree.map(lambda x: x.astype(dtype), G)
    state = opt.init(params)
    for _ in range(2):
        updates, state = _update(opt, grads, state, params)
        assert jax.tree.map(lambda u: u.dtype, updates) == {"w": dtype, "b": dtype}


INIT_ONLY = [
    (lambda: gradx.adagrad(0.1), "initial_accumulator_value"),
    (lambda: gradx.rmsprop(0.1), "initial_scale"),
    (lambda: gradx.compat.optax.adagrad(0.1), "initial_accumulator_value"),
    (lambda: gradx.compat.optax.rmsprop(0.1), "initial_scale"),
    (lambda: gradx.compat.keras.Adagrad(), "initial_accumulator_value"),
    (lambda: gradx.compat.torch.Adagrad(), "initial_accumulator_value"),
]


@pytest.mark.parametrize("make, name", INIT_ONLY)
def test_a_value_only_init_reads_is_refused_by_set_hyperparams(make, name):
    # G0 / v0 fill the accumulator at init: a value set afterwards would be stored and shown
    # by gradx.hyperparams, but never used (a sweep over it gave identical runs)
    params = {"w": jnp.ones(3)}
    state = make().init(params)
    with pytest.raises(
        ValueError, match=rf"^set_hyperparams: {name} is read once, when init fills the state"
    ):
        gradx.set_hyperparams(state, **{name: 3.0})
    gradx.set_hyperparams(state, learning_rate=0.2)  # the others are still settings


def test_a_sweep_over_an_initial_accumulator_is_refused():
    x = jnp.ones((8, 3))
    with pytest.raises(ValueError, match=r"initial_accumulator_value is read once"):
        gradx.sweep(
            lambda p, b: jnp.mean((b @ p["w"]) ** 2), {"w": jnp.ones(3)}, gradx.adagrad(0.1), x,
            {"initial_accumulator_value": np.array([0.0, 100.0])}, batch_size=None, epochs=1,
            key=None, progress=False,
        )  # fmt: skip


def test_adadelta_with_eps_0_steps_0_where_its_accumulator_is_0():
    # allowed by the rule (eps >= 0), so guarded: 0, not 0/0 = NaN; built with eps > 0 the
    # guard is not compiled and set_hyperparams refuses 0
    params = {"w": jnp.array([1.0, 2.0])}
    opt = gradx.adadelta(1.0, eps=0.0)
    updates, _ = opt.update({"w": jnp.array([0.5, 0.0])}, opt.init(params), params)
    np.testing.assert_array_equal(updates["w"], [0.0, 0.0])  # E_d = 0: Adadelta never moves
    alpha = gradx.effective_learning_rate(opt, opt.init(params), params, {"w": jnp.zeros(2)})
    assert np.all(np.isfinite(alpha["w"]))
    with pytest.raises(ValueError, match=r"^set_hyperparams: eps must be > 0 \(the optimizer"):
        gradx.set_hyperparams(gradx.adadelta(1.0).init(params), eps=0.0)
