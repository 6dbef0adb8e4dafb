"""Hyperparameters in the state, their validation, and the protocol glue."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx

PARAMS = {"w": jnp.ones(3, jnp.float32)}


def test_hyperparams_are_read_by_constructor_argument_names():
    state = gradx.momentum(0.1, momentum=0.8).init(PARAMS)
    hp = gradx.hyperparams(state)
    assert set(hp) == {"learning_rate", "momentum"}
    assert float(hp["learning_rate"]) == pytest.approx(0.1)
    assert float(hp["momentum"]) == pytest.approx(0.8)


def test_set_hyperparams_returns_a_new_state_and_changes_the_step():
    opt = gradx.sgd(0.1)
    state = opt.init(PARAMS)
    new = gradx.set_hyperparams(state, learning_rate=0.5)
    assert float(gradx.hyperparams(state)["learning_rate"]) == pytest.approx(0.1)
    updates, _ = opt.update({"w": jnp.ones(3, jnp.float32)}, new)
    np.testing.assert_allclose(updates["w"], -0.5)


@pytest.mark.parametrize(
    "dtype, want",
    [(jnp.bfloat16, jnp.float32), (jnp.float32, jnp.float32), (jnp.float64, jnp.float64)],
)
def test_hyperparameter_dtype_is_float32_or_wider_never_narrower(dtype, want):
    state = gradx.ema_momentum(0.1, beta=0.999).init({"w": jnp.ones(2, dtype)})
    beta = gradx.hyperparams(state)["beta"]
    assert beta.dtype == want
    assert float(beta) == float(np.asarray(0.999, want))  # not rounded to bf16's 1.0


def test_bf16_ema_with_beta_0999_still_moves():
    # In bf16, 0.999 rounds to 1.0 and the average would never move (optax issue 1414).
    opt = gradx.ema_momentum(1.0, beta=0.999)
    params = {"w": jnp.zeros(2, jnp.bfloat16)}
    updates, _ = opt.update({"w": jnp.ones(2, jnp.bfloat16)}, opt.init(params))
    np.testing.assert_allclose(np.asarray(updates["w"], np.float32), -0.001, rtol=1e-2)


def test_schedule_values_are_reported_and_cannot_be_set_by_hand():
    schedule = optax.exponential_decay(1.0, transition_steps=1, decay_rate=0.5)
    opt = gradx.sgd(schedule)
    state = opt.init(PARAMS)
    assert float(gradx.hyperparams(state)["learning_rate"]) == 1.0
    grads = {"w": jnp.ones(3, jnp.float32)}
    seen = []
    for _ in range(3):
        updates, state = jax.jit(opt.update)(grads, state)
        seen.append(float(updates["w"][0]))
    assert seen == [-1.0, -0.5, -0.25]
    assert float(gradx.hyperparams(state)["learning_rate"]) == 0.25  # used at the last step
    with pytest.raises(ValueError, match="'learning_rate' follows a schedule"):
        gradx.set_hyperparams(state, learning_rate=0.1)


def test_duplicate_names_are_addressed_by_path():
    opt = gradx.chain(gradx.sgd(0.1), gradx.momentum(0.2, momentum=0.5))
    state = opt.init(PARAMS)
    hp = gradx.hyperparams(state)
    assert set(hp) == {"0/learning_rate", "1/learning_rate", "momentum"}
    with pytest.raises(ValueError, match=r"occurs 2 times.*'0/learning_rate', '1/learning_rate'"):
        gradx.set_hyperparams(state, learning_rate=0.3)
    state = gradx.set_hyperparams(state, **{"1/learning_rate": 0.3}, momentum=0.0)
    hp = gradx.hyperparams(state)
    assert float(hp["0/learning_rate"]) == pytest.approx(0.1)
    assert float(hp["1/learning_rate"]) == pytest.approx(0.3)
    assert float(hp["momentum"]) == 0.0


def test_set_hyperparams_rejects_unknown_names_and_bad_values():
    state = gradx.momentum(0.1).init(PARAMS)
    with pytest.raises(
        ValueError, match=r"no hyperparameter 'lr'; it has \['learning_rate', 'momentum'\]"
    ):
        gradx.set_hyperparams(state, lr=0.1)
    with pytest.raises(
        ValueError, match=r"set_hyperparams: momentum must be in \[0, 1\), got 1\.0"
    ):
        gradx.set_hyperparams(state, momentum=1.0)
    with pytest.raises(ValueError, match=r"learning_rate must be >= 0, got nan"):
        gradx.set_hyperparams(state, learning_rate=float("nan"))
    with pytest.raises(TypeError, match=r"learning_rate must be a number >= 0, got 'fast'"):
        gradx.set_hyperparams(state, learning_rate="fast")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: gradx.sgd(-1.0), r"sgd: learning_rate must be >= 0, got -1\.0"),
        (lambda: gradx.sgd(float("inf")), r"sgd: learning_rate must be >= 0, got inf"),
        (
            lambda: gradx.momentum(0.1, momentum=1.0),
            r"momentum: momentum must be in \[0, 1\), got 1\.0",
        ),
        (
            lambda: gradx.momentum(0.1, momentum=-0.1),
            r"momentum: momentum must be in \[0, 1\), got -0\.1",
        ),
        (lambda: gradx.nesterov(0.1, momentum=2), r"nesterov: momentum must be in \[0, 1\), got 2"),
        (
            lambda: gradx.ema_momentum(0.1, beta=1.5),
            r"ema_momentum: beta must be in \[0, 1\), got 1\.5",
        ),
        (
            lambda: gradx.normalized_sgd(-0.5),
            r"normalized_sgd: learning_rate must be >= 0, got -0\.5",
        ),
        (
            lambda: gradx.sgd(optax.constant_schedule(-1.0)),
            r"sgd: learning_rate \(its schedule's value at step 0\) must be >= 0",
        ),
        (
            lambda: gradx.sgd(jnp.array([0.1, 0.2])),
            r"sgd: learning_rate must be a scalar, got shape \(2,\)",
        ),
    ],
)
def test_construction_validates_concrete_hyperparameters(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: gradx.sgd("0.1"), r"sgd: learning_rate must be a number >= 0, got '0\.1'"),
        (
            lambda: gradx.momentum(0.1, momentum=True),
            r"momentum: momentum must be a number in \[0, 1\), got True",
        ),
        (
            lambda: gradx.sgd(0.1, beta=0.9),
            r"sgd: got an unexpected keyword argument 'beta'",
        ),
    ],
)
def test_construction_rejects_wrong_types(make, message):
    with pytest.raises(TypeError, match=message):
        make()


def test_tracers_pass_construction_unchecked():
    @jax.jit
    def step(lr):
        opt = gradx.sgd(lr)
        updates, _ = opt.update(PARAMS, opt.init(PARAMS))
        return updates["w"]

    np.testing.assert_allclose(step(0.25), -0.25)


def test_update_with_a_foreign_state_is_a_clear_error():
    with pytest.raises(
        TypeError, match="sgd: state must be the state this optimizer's init returned"
    ):
        gradx.sgd(0.1).update(PARAMS, optax.sgd(0.1).init(PARAMS))


def test_state_survives_tree_map_and_is_only_arrays():
    state = gradx.chain(gradx.momentum(0.1), gradx.ema_momentum(0.1)).init(PARAMS)
    leaves = jax.tree.leaves(state)
    assert all(isinstance(x, jax.Array) for x in leaves)
    doubled = jax.tree.map(lambda x: x * 2, state)
    assert float(gradx.hyperparams(doubled)["momentum"]) == pytest.approx(1.8)


def test_user_defined_optimizer_gets_hyperparameters_in_state():
    @gradx.optimizer(learning_rate=">= 0", beta="[0, 1)")
    def my_momentum(learning_rate, beta=0.5):
        return gradx.chain(
            gradx.ema(beta, debias=True), gradx.scale_by_learning_rate(learning_rate)
        )

    opt = my_momentum(0.1)
    state = opt.init(PARAMS)
    assert set(gradx.hyperparams(state)) == {"learning_rate", "beta"}
    with pytest.raises(ValueError, match=r"my_momentum: beta must be in \[0, 1\), got 1\.0"):
        my_momentum(0.1, beta=1.0)


def test_rule_parsing():
    rule = gradx.Rule.parse("int >= 1")
    assert rule.text == "an integer >= 1"
    with pytest.raises(ValueError, match=r"f: k must be an integer >= 1, got 2\.5"):
        rule.check("f", "k", 2.5)
    rule.check("f", "k", 3)
    assert gradx.Rule.parse("(0, 1]").holds(np.array(1.0))
    assert not gradx.Rule.parse("(0, 1]").holds(np.array(0.0))
    with pytest.raises(ValueError, match=r"Rule\.parse"):
        gradx.Rule.parse("between 0 and 1")


def test_optimizers_that_differ_only_in_numbers_share_one_update_function():
    # So jax.jit (and gradx.fit) compile once for every learning rate.
    assert gradx.sgd(0.1).update is gradx.sgd(0.3).update
    assert gradx.adam(1e-3, b1=0.8).update is gradx.adam(1e-2).update
    assert gradx.adam(1e-3).update is not gradx.adam(1e-3, eps_hat=True).update
    assert gradx.rmsprop(0.1).update is not gradx.rmsprop(0.1, momentum=0.9).update
