"""fit and sweep: data regimes, shuffles, compilation counts, value=, and sweep == fit."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx
from gradx import losses

N, D = 23, 3
KEY = jax.random.key(0)
X = jax.random.normal(jax.random.key(1), (N, D), jnp.float64)
W_TRUE = jnp.array([1.0, -2.0, 0.5])
Y = X @ W_TRUE
DATA = {"x": X, "y": Y}
P0 = {"w": jnp.zeros(D), "b": jnp.zeros(())}


def loss_fn(params, batch):
    return losses.mse(batch["x"] @ params["w"] + params["b"], batch["y"])


def _reference_epochs(params, lr, batch_size, epochs, key=KEY):
    """Plain Python SGD with the documented shuffles: fold_in(key, epoch), drop the rest."""
    grad = jax.jit(jax.value_and_grad(loss_fn))
    losses_per_epoch = []
    for epoch in range(epochs):
        if batch_size is None:
            batches = [np.arange(N)]
        else:
            order = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), N))
            steps = N // batch_size
            batches = order[: steps * batch_size].reshape(steps, batch_size)
        seen = []
        for idx in batches:
            value, g = grad(params, jax.tree.map(lambda a, idx=idx: a[idx], DATA))
            params = jax.tree.map(lambda p, g: p - lr * g, params, g)
            seen.append(float(value))
        losses_per_epoch.append(np.mean(seen))
    return params, np.asarray(losses_per_epoch)


@pytest.mark.parametrize("batch_size", [None, 1, 5])
def test_one_argument_gives_gd_sgd_and_minibatch(batch_size):
    result = gradx.fit(
        loss_fn, P0, gradx.sgd(0.05), DATA, batch_size=batch_size, epochs=3, key=KEY, progress=False
    )
    want_params, want_losses = _reference_epochs(P0, 0.05, batch_size, 3)
    np.testing.assert_allclose(result.history["loss"], want_losses, rtol=1e-12)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), result.params, want_params
    )
    steps = {None: 1, 1: N, 5: N // 5}[batch_size]
    assert (result.steps_per_epoch, result.dropped_per_epoch) == (
        steps,
        0 if batch_size in (None, 1) else N % 5,
    )


def test_every_epoch_is_a_fresh_permutation_and_the_key_matters():
    seen = []

    class Record(NamedTuple):
        first: Any

    def record_first_batch():
        # value= carries the loss; record batch identity through the loss of the first step.
        def init(params):
            return Record(jnp.zeros((), jnp.float64))

        def update(updates, state, params=None, **extra):
            return jax.tree.map(jnp.zeros_like, updates), Record(extra["value"])

        return optax.GradientTransformationExtraArgs(init, update)

    def fit(key):
        r = gradx.fit(
            loss_fn, P0, record_first_batch(), DATA, batch_size=4, epochs=3, key=key, progress=False
        )
        return r.history["loss"]

    a, b = fit(KEY), fit(jax.random.key(7))
    seen.extend([a, b])
    assert len(set(np.round(a, 12))) == 3  # params never move: losses differ by batches only
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, fit(KEY))  # same key, same shuffles


def test_value_is_the_loss_at_the_params_the_gradient_was_taken_at():
    class State(NamedTuple):
        values: jax.Array  # shape=(steps,)
        count: jax.Array

    def recorder(steps):
        def init(params):
            return State(jnp.zeros(steps, jnp.float64), jnp.zeros((), jnp.int32))

        def update(updates, state, params=None, *, value):
            return (
                jax.tree.map(lambda g: -0.05 * g, updates),
                State(state.values.at[state.count].set(value), state.count + 1),
            )

        return optax.GradientTransformationExtraArgs(init, update)

    result = gradx.fit(
        loss_fn, P0, recorder(4), DATA, batch_size=5, epochs=1, key=KEY, progress=False
    )
    np.testing.assert_allclose(
        result.opt_state.values.mean(), result.history["loss"][0], rtol=1e-12
    )
    # a plain optax transformation (no extra args) still works: value= is dropped for it
    plain = gradx.fit(
        loss_fn, P0, optax.sgd(0.05), DATA, batch_size=5, epochs=1, key=KEY, progress=False
    )
    np.testing.assert_allclose(plain.params["w"], result.params["w"], rtol=1e-12)


def test_compiles_once_per_shape_not_per_epoch_or_learning_rate():
    traces = []

    def counted_loss(params, batch):
        traces.append(1)
        return loss_fn(params, batch)

    for lr in (0.1, 0.05, 0.01):
        gradx.fit(
            counted_loss,
            P0,
            gradx.momentum(lr, momentum=0.5),
            DATA,
            batch_size=4,
            epochs=3,
            key=KEY,
            progress=False,
        )
    assert len(traces) == 1
    gradx.fit(
        counted_loss, P0, gradx.momentum(0.1), DATA, batch_size=6, epochs=2, key=KEY, progress=False
    )
    assert len(traces) == 2  # a new batch shape is a new program
    state = gradx.set_hyperparams(gradx.sgd(0.1).init(P0), learning_rate=0.3)
    gradx.fit(
        counted_loss,
        P0,
        gradx.sgd(0.1),
        DATA,
        batch_size=4,
        epochs=2,
        key=KEY,
        opt_state=state,
        progress=False,
    )
    assert len(traces) == 3  # a new optimizer is a new program, its learning rate is not


def test_callers_params_survive_donation_and_eval_metrics_are_recorded():
    params = {"w": jnp.ones(D), "b": jnp.zeros(())}

    def eval_fn(p, data):
        return {"eval_mse": loss_fn(p, data), "w0": p["w"][0]}

    result = gradx.fit(
        loss_fn,
        params,
        gradx.sgd(0.05),
        DATA,
        batch_size=5,
        epochs=4,
        key=KEY,
        eval_fn=eval_fn,
        eval_data=DATA,
        progress=False,
    )
    np.testing.assert_array_equal(params["w"], 1.0)  # still readable: not donated
    assert set(result.history) == {"loss", "eval_mse", "w0"}
    assert result.history["eval_mse"].shape == (4,)
    np.testing.assert_allclose(result.history["w0"][-1], result.params["w"][0], rtol=1e-12)
    assert result.history["eval_mse"][-1] < result.history["eval_mse"][0]
    assert result.epoch_seconds.shape == (4,)


def test_progress_bar_is_printed_and_can_be_turned_off(capsys):
    gradx.fit(loss_fn, P0, gradx.sgd(0.05), DATA, batch_size=5, epochs=2, key=KEY, progress=True)
    assert "2/2" in capsys.readouterr().err
    gradx.fit(loss_fn, P0, gradx.sgd(0.05), DATA, batch_size=5, epochs=2, key=KEY, progress=False)
    assert capsys.readouterr().err == ""


def test_sweep_points_equal_separate_fits():
    grid = {"learning_rate": jnp.array([0.2, 0.05, 0.01]), "momentum": jnp.array([0.0, 0.7])}

    def eval_fn(p, data):
        return {"eval_mse": loss_fn(p, data)}

    result = gradx.sweep(
        loss_fn,
        P0,
        gradx.momentum(0.1),
        DATA,
        grid,
        batch_size=4,
        epochs=3,
        key=KEY,
        chunk_size=4,
        eval_fn=eval_fn,
        progress=False,
    )
    assert len(result) == 6
    assert result.epoch_seconds.shape == (2, 3)  # two chunks, the second padded
    np.testing.assert_allclose(result.grid["learning_rate"], [0.2, 0.2, 0.05, 0.05, 0.01, 0.01])
    np.testing.assert_allclose(result.grid["momentum"], [0.0, 0.7] * 3)
    assert result.history["loss"].shape == (6, 3)
    assert result.params["w"].shape == (6, D)
    for i in range(6):
        lr, mu = float(result.grid["learning_rate"][i]), float(result.grid["momentum"][i])
        alone = gradx.fit(
            loss_fn,
            P0,
            gradx.momentum(lr, momentum=mu),
            DATA,
            batch_size=4,
            epochs=3,
            key=KEY,
            eval_fn=eval_fn,
            progress=False,
        )
        point = result.point(i)
        for name in ("loss", "eval_mse"):
            np.testing.assert_allclose(
                point.history[name], alone.history[name], rtol=1e-5, atol=1e-12
            )
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-12),
            point.params,
            alone.params,
        )
    best = result.best()
    assert best.index == int(np.argmin(result.history["loss"][:, -1]))
    assert best.values == {
        "learning_rate": result.grid["learning_rate"][best.index],
        "momentum": result.grid["momentum"][best.index],
    }
    assert result.best("eval_mse").score == pytest.approx(result.history["eval_mse"][:, -1].min())


def test_best_skips_diverged_points():
    result = gradx.sweep(
        loss_fn,
        P0,
        gradx.sgd(0.1),
        DATA,
        {"learning_rate": [1e4, 0.1]},
        batch_size=None,
        epochs=60,
        key=None,
        progress=False,
    )
    assert not np.isfinite(result.history["loss"][0, -1])
    assert result.best().index == 1
    assert result.best(mode="max").index == 1  # NaN never wins, either way


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            {"batch_size": 0},
            r"fit: batch_size must be None or an integer in \[1, 23\] \(the number of examples\), got 0",
        ),
        ({"batch_size": 24}, r"got 24"),
        ({"batch_size": 2.0}, r"fit: batch_size must be None or an integer >= 1, got 2.0"),
        ({"epochs": 0}, r"fit: epochs must be an integer >= 1, got 0"),
        ({"key": None}, r"fit: key must be a JAX PRNG key"),
        ({"key": 3}, r"fit: key must be a JAX PRNG key .*got 3"),
        (
            {"data": {"x": X, "y": Y[:5]}},
            r"fit: data must be arrays with one leading example axis of the same nonzero length",
        ),
    ],
)
def test_fit_rejects_bad_arguments(kwargs, match):
    args = {"batch_size": 4, "epochs": 1, "key": KEY, "data": DATA, **kwargs}
    data = args.pop("data")
    with pytest.raises(ValueError, match=match):
        gradx.fit(loss_fn, P0, gradx.sgd(0.1), data, progress=False, **args)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"loss_fn": 5}, TypeError, r"fit: loss_fn must be callable, got int 5"),
        ({"eval_fn": 3}, TypeError, r"fit: eval_fn must be callable, got int 3"),
        (
            {"eval_data": (DATA, "val")},
            TypeError,
            r"fit: eval_data must be a pytree of numeric arrays, got str 'val' at eval_data\[1\]",
        ),
        (
            {"eval_data": {"x": X, "y": np.array(["a"] * N)}},
            TypeError,
            r"fit: eval_data must be a pytree of numeric arrays, got an array of dtype <U1 at "
            r"eval_data\['y'\]",
        ),
        (
            {"data": {"x": X, "y": Y, "name": "train"}},
            TypeError,
            r"fit: data must be a pytree of numeric arrays, got str 'train' at data\['name'\]",
        ),
        (
            {"opt_state": 5},
            ValueError,
            r"fit: opt_state does not have the structure, shapes and dtypes of "
            r"optimizer.init\(params\), .*; got int 5",
        ),
        (
            {"opt_state": gradx.adam(0.1).init({"w": jnp.zeros(2), "b": jnp.zeros(())})},
            ValueError,
            r"fit: opt_state does not have .* first difference \(given vs init's\): "
            r".*\['w'\]: shape \(2,\) dtype float64 vs shape \(3,\) dtype float64",
        ),
    ],
)
def test_fit_names_the_argument_a_bad_function_eval_data_or_state_breaks(kwargs, error, match):
    args = {"loss_fn": loss_fn, "data": DATA, "eval_fn": lambda p, d: p["b"], **kwargs}
    with pytest.raises(error, match=match):
        gradx.fit(
            args.pop("loss_fn"), P0, gradx.adam(0.1), args.pop("data"), batch_size=4,
            epochs=1, key=KEY, progress=False, **args,
        )  # fmt: skip


def test_fit_rejects_a_non_scalar_loss_and_a_metric_named_loss():
    with pytest.raises(ValueError, match=r"fit: loss_fn must return a scalar, got shape \(4,\)"):
        gradx.fit(
            lambda p, b: b["y"] * p["b"],
            P0,
            gradx.sgd(0.1),
            DATA,
            batch_size=4,
            epochs=1,
            key=KEY,
            progress=False,
        )
    with pytest.raises(ValueError, match=r"fit: eval_fn must not return a metric named 'loss'"):
        gradx.fit(
            loss_fn,
            P0,
            gradx.sgd(0.1),
            DATA,
            batch_size=4,
            epochs=1,
            key=KEY,
            eval_fn=lambda p, d: {"loss": 0.0},
            progress=False,
        )


@pytest.mark.parametrize(
    "grid, match",
    [
        (
            {"lr": [0.1]},
            r"sweep: grid keys must be hyperparameters of the optimizer's state \['learning_rate'\].*got 'lr'",
        ),
        (
            {"learning_rate": [[0.1]]},
            r"sweep: grid\['learning_rate'\] must be a non-empty 1-D array, got shape \(1, 1\)",
        ),
        (
            {"learning_rate": [0.1, -1.0]},
            r"sweep: grid\['learning_rate'\] must be >= 0, got -1.0 \(at index 1\)",
        ),
        (
            {"learning_rate": [0.1, 0.2, float("nan")]},
            r"sweep: grid\['learning_rate'\] must be >= 0, got nan \(at index 2\)",
        ),
        ({}, r"sweep: grid must be a non-empty dict"),
    ],
)
def test_sweep_rejects_bad_grids(grid, match):
    with pytest.raises(ValueError, match=match):
        gradx.sweep(
            loss_fn, P0, gradx.sgd(0.1), DATA, grid, batch_size=4, epochs=1, key=KEY, progress=False
        )


def test_sweep_result_best_rejects_unknown_metric():
    result = gradx.sweep(
        loss_fn,
        P0,
        gradx.sgd(0.1),
        DATA,
        {"learning_rate": [0.1]},
        batch_size=None,
        epochs=1,
        key=None,
        progress=False,
    )
    with pytest.raises(
        ValueError, match=r"SweepResult.best: metric must be one of \['loss'\], got 'acc'"
    ):
        result.best("acc")


def test_sweep_result_best_reads_the_direction_from_the_name():
    def scores(params, data):
        mse = loss_fn(params, data)
        return {"val_acc": 1.0 - mse, "val_mse": mse, "val_score": mse}

    result = gradx.sweep(
        loss_fn, P0, gradx.sgd(0.1), DATA, {"learning_rate": [1e-4, 0.05, 0.01]},
        batch_size=None, epochs=3, key=None, eval_fn=scores, progress=False,
    )  # fmt: skip
    final_mse = result.history["val_mse"][:, -1]
    assert int(np.argmin(final_mse)) == 1 and int(np.argmax(final_mse)) == 0  # has teeth
    assert result.best("val_acc").index == 1  # an accuracy is maximised
    assert result.best("val_mse").index == 1 and result.best().index == 1  # losses minimised
    assert result.best("val_acc", mode="min").index == 0  # an explicit mode wins
    with pytest.raises(
        ValueError,
        match=r"SweepResult.best: metric must have a name .*got 'val_score', a name of "
        r"neither kind; pass mode='min' or mode='max'",
    ):
        result.best("val_score")
    assert result.best("val_score", "max").index == 0


@pytest.mark.parametrize(
    "optimizer, match",
    [
        ("adam", r"got the string 'adam' \(gradx.OPTIMIZERS\['adam'\]\(learning_rate\) builds"),
        (gradx.adam, r"got the function gradx.adam; call it: gradx.adam\(1e-3\)"),
        (optax.sgd, r"got the function optax.sgd; call it: optax.sgd\(1e-3\)"),
        (0.1, r"got 0.1, which has no init and update methods"),
    ],
)
def test_fit_and_sweep_refuse_an_optimizer_that_is_not_a_transformation(optimizer, match):
    want = r"optimizer must be an optax GradientTransformation such as gradx.adam\(1e-3\), "
    with pytest.raises(TypeError, match="fit: " + want + ".*" + match):
        gradx.fit(loss_fn, P0, optimizer, DATA, batch_size=None, epochs=1, key=None)
    with pytest.raises(TypeError, match="sweep: " + want + ".*" + match):
        gradx.sweep(loss_fn, P0, optimizer, DATA, {"learning_rate": [0.1]}, batch_size=None,
                    epochs=1, key=None)  # fmt: skip


def test_a_list_of_batches_is_refused_and_a_list_of_arrays_is_data():
    batches = [{"x": X[i : i + 5], "y": Y[i : i + 5]} for i in range(0, 20, 5)]
    kw = dict(batch_size=None, epochs=1, key=None, progress=False)
    with pytest.raises(
        ValueError,
        match=r"fit: data must be a pytree of arrays .*got a list of 4 pytrees, which reads as "
        r"a list of batches; .*pass data=lambda epoch: batches",
    ):
        gradx.fit(loss_fn, P0, gradx.sgd(0.1), batches, **kw)
    with pytest.raises(ValueError, match=r"sweep: data must be .*got a list of 4 pytrees"):
        gradx.sweep(loss_fn, P0, gradx.sgd(0.1), batches, {"learning_rate": [0.1]}, **kw)
    # What the message suggests: a callable streams them, one epoch = the list.
    streamed = gradx.fit(loss_fn, P0, gradx.sgd(0.1), lambda epoch: batches, **kw)
    assert streamed.steps_per_epoch == 4
    # A list of arrays is Keras's multi-input form: in-memory data, as a tuple is.
    pair = lambda p, b: loss_fn(p, {"x": b[0], "y": b[1]})
    as_list = gradx.fit(pair, P0, gradx.sgd(0.1), [X, Y], **kw)
    as_tuple = gradx.fit(pair, P0, gradx.sgd(0.1), (X, Y), **kw)
    np.testing.assert_array_equal(as_list.history["loss"], as_tuple.history["loss"])


@pytest.mark.parametrize(
    "kwargs", [{}, {"skip_nonfinite": True}, {"accumulate": 2}], ids=["plain", "skip", "window"]
)
def test_bool_and_int8_aux_are_averaged_as_numbers(kwargs):
    # 200 examples, one per step (100 windows of 2 with accumulate): with each example seen
    # once, a bool "the batch holds example 0" averages to 1/200, an int8 count of examples
    # below 10 to 10/200, an int8 constant 1 to 1. With skip_nonfinite example 5 is poisoned:
    # the 199 steps taken average to 1/199, 9/199 and 1 (not a count, not an int8 divisor).
    n = 200
    x = np.ones((n, 1))
    y = np.zeros(n)
    if kwargs.get("skip_nonfinite"):
        y[5] = np.inf
    data = {"x": x, "y": y, "i": np.arange(n)}

    def loss(params, batch):
        value = losses.mse(batch["x"] @ params["w"], batch["y"])
        small = jnp.sum(batch["i"] < 10).astype(jnp.int8)
        return value, {"has0": jnp.any(batch["i"] == 0), "small": small, "one": jnp.int8(1)}

    got = gradx.fit(
        loss, {"w": jnp.zeros(1)}, gradx.sgd(0.01), data, batch_size=1, epochs=1, key=KEY,
        progress=False, has_aux=True, **kwargs,
    )  # fmt: skip
    taken = n - 1 if kwargs.get("skip_nonfinite") else n
    want = {"has0": 1 / taken, "small": (9 if taken < n else 10) / taken, "one": 1.0}
    for name, value in want.items():
        np.testing.assert_allclose(got.history[name], [value], rtol=1e-6, err_msg=name)
