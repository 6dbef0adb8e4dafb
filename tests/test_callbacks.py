"""Callbacks (Keras's EarlyStopping and ReduceLROnPlateau), has_aux, and non-finite steps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_checkpoint import Interrupt, interrupt_at

import gradx
from gradx import losses
from gradx.callbacks import Action, EarlyStopping, ReduceLROnPlateau, metric_mode

N, D, B = 20, 3, 5
KEY = jax.random.key(0)
X = np.asarray(jax.random.normal(jax.random.key(1), (N, D), jnp.float64))
Y = X @ np.array([1.0, -2.0, 0.5])
DATA = {"x": X, "y": Y}
P0 = {"w": jnp.zeros(D), "b": jnp.zeros(())}


def loss_fn(params, batch):
    return losses.mse(batch["x"] @ params["w"] + params["b"], batch["y"])


def val_fn(params, data):
    del data
    return {"val": (params["w"][0] - 0.5) ** 2}  # w0 goes 0 -> 1: falls, then rises


def batches(epoch, data=DATA):
    order = np.asarray(jax.random.permutation(jax.random.fold_in(KEY, epoch), N))
    return [{k: v[order[i * B : (i + 1) * B]] for k, v in data.items()} for i in range(N // B)]


def keras_early_stopping(values, patience, min_delta=0.0):
    """Keras 3's EarlyStopping.on_epoch_end, mode min, transcribed: (stop epoch, best epoch)."""
    best, best_epoch, wait = None, 0, 0
    for epoch, current in enumerate(values):
        wait += 1
        if best is None or current + min_delta < best:
            best, best_epoch, wait = current, epoch, 0
            continue
        if wait >= patience and epoch > 0:
            return epoch, best_epoch
    return None, best_epoch


def test_early_stopping_unit_trace_by_hand():
    stop = EarlyStopping(
        monitor="val", min_delta=0.05, patience=2, mode="min", restore_best_weights=True
    )
    stop.on_train_begin()
    actions = []
    for epoch, value in enumerate([1.0, 0.8, 0.79, 0.85]):
        actions.append(stop.on_epoch_end(epoch, {"val": value}, {"w": jnp.array(epoch)}, None))
    # 1.0 improves (first); 0.8 < 1.0 - 0.05 improves; 0.79 and 0.85 do not: stop at epoch 3
    assert actions[:3] == [None, None, None] and actions[3] == Action(stop=True)
    assert (stop.stopped_epoch, stop.best_epoch, stop.best) == (3, 1, 0.8)
    assert int(stop.on_train_end(None, None).params["w"]) == 1
    with pytest.raises(
        ValueError,
        match=r"EarlyStopping: monitor must be one of the logged names \['loss'\], got 'val'",
    ):
        stop.on_epoch_end(5, {"loss": 1.0}, None, None)
    with pytest.raises(
        ValueError, match=r"EarlyStopping: patience must be an integer >= 0, got -1"
    ):
        EarlyStopping(patience=-1)
    with pytest.raises(ValueError, match=r"ReduceLROnPlateau: factor must be in \(0, 1\), got 1.5"):
        ReduceLROnPlateau(factor=1.5)


def test_early_stopping_in_fit_stops_and_restores_the_best_weights():
    common = dict(batch_size=B, key=KEY, eval_fn=val_fn, eval_data=DATA, progress=False)
    free = gradx.fit(loss_fn, P0, gradx.sgd(0.01), DATA, epochs=30, **common)
    stop_epoch, best_epoch = keras_early_stopping(free.history["val"], patience=2)
    assert stop_epoch is not None and 0 < best_epoch < stop_epoch < 29  # the test has teeth

    stopped = gradx.fit(
        loss_fn, P0, gradx.sgd(0.01), DATA, epochs=30,
        callbacks=[EarlyStopping("val", patience=2, mode="min", restore_best_weights=True)],
        **common,
    )  # fmt: skip
    np.testing.assert_array_equal(stopped.history["val"], free.history["val"][: stop_epoch + 1])
    best = gradx.fit(loss_fn, P0, gradx.sgd(0.01), DATA, epochs=best_epoch + 1, **common)
    jax.tree.map(np.testing.assert_array_equal, stopped.params, best.params)


def test_reduce_lr_on_plateau_unit_trace_by_hand():
    state = gradx.sgd(1.0).init(P0)
    reduce = ReduceLROnPlateau(factor=0.5, patience=1, cooldown=1, min_delta=0.0, min_lr=0.2)
    seen = []
    for epoch in range(6):
        action = reduce.on_epoch_end(epoch, {"loss": 1.0}, P0, state)
        if action is not None:
            state = action.opt_state
        seen.append(float(gradx.hyperparams(state)["learning_rate"]))
    # e0 improves on +inf; e1 reduces; e2 leaves cooldown and reduces; e3 clips at min_lr;
    # then lr > min_lr is false: no more reductions (Keras's rule, cooldown included)
    assert seen == [1.0, 0.5, 0.25, 0.2, 0.2, 0.2]
    with pytest.raises(
        ValueError,
        match=r"ReduceLROnPlateau: hyperparameter must be one of the optimizer state's \['learning_rate'\]",
    ):
        ReduceLROnPlateau(hyperparameter="lr", patience=0).on_epoch_end(0, {"loss": 1.0}, P0, state)


def test_reduce_lr_on_plateau_in_fit_does_not_recompile():
    traces = []

    def counted(params, batch):
        traces.append(1)
        return loss_fn(params, batch)

    reduce = ReduceLROnPlateau(factor=0.5, patience=0, min_delta=100.0)  # every epoch from 1
    result = gradx.fit(
        counted,
        P0,
        gradx.sgd(0.05),
        DATA,
        batch_size=B,
        epochs=4,
        key=KEY,
        callbacks=[reduce],
        progress=False,
    )
    assert len(traces) == 1  # four learning rates, one program
    # the same run by hand: one epoch at a time, the rate written with set_hyperparams
    params, state, losses_ = P0, gradx.sgd(0.05).init(P0), []
    for epoch, lr in enumerate([0.05, 0.05, 0.025, 0.0125]):
        state = gradx.set_hyperparams(state, learning_rate=lr)
        r = gradx.fit(
            loss_fn, params, gradx.sgd(0.05), DATA, batch_size=B, epochs=epoch + 1, key=KEY,
            opt_state=state, initial_epoch=epoch, progress=False,
        )  # fmt: skip
        params, state = r.params, r.opt_state
        losses_.append(r.history["loss"][0])
    np.testing.assert_array_equal(result.history["loss"], losses_)
    jax.tree.map(np.testing.assert_array_equal, result.params, params)
    assert float(gradx.hyperparams(result.opt_state)["learning_rate"]) == 0.05 / 8


def test_a_function_callback_sees_each_epoch_and_can_stop():
    seen = []

    def callback(epoch, logs, params, opt_state):
        seen.append((epoch, sorted(logs)))
        return Action(stop=epoch == 1)

    result = gradx.fit(
        loss_fn,
        P0,
        gradx.sgd(0.05),
        DATA,
        batch_size=B,
        epochs=5,
        key=KEY,
        callbacks=[callback],
        progress=False,
    )
    assert seen == [(0, ["loss"]), (1, ["loss"])] and result.history["loss"].shape == (2,)
    with pytest.raises(
        ValueError, match=r"fit: a callback must return None or gradx.callbacks.Action, got True"
    ):
        gradx.fit(
            loss_fn,
            P0,
            gradx.sgd(0.05),
            DATA,
            batch_size=B,
            epochs=1,
            key=KEY,
            callbacks=[lambda *a: True],
            progress=False,
        )


def aux_loss(params, batch):
    pred = batch["x"] @ params["w"] + params["b"]
    return losses.mse(pred, batch["y"]), {"mae": jnp.mean(jnp.abs(pred - batch["y"]))}


def reference(loss, lr, epochs, skip=False, data=DATA):
    """Plain Python SGD over the documented shuffles: per-epoch mean loss, aux and skips."""
    grad = jax.jit(jax.value_and_grad(loss, has_aux=True))
    params, rows = P0, []
    for epoch in range(epochs):
        values, maes, skipped = [], [], 0
        for batch in batches(epoch, data):
            (value, aux), g = grad(params, batch)
            finite = np.isfinite(value) and all(np.all(np.isfinite(x)) for x in jax.tree.leaves(g))
            if skip and not finite:
                skipped += 1
                continue
            params = jax.tree.map(lambda p, g: p - lr * g, params, g)
            values.append(float(value))
            maes.append(float(aux["mae"]))
        rows.append((np.mean(values), np.mean(maes), skipped))
    return params, np.asarray(rows)


def test_has_aux_averages_the_aux_outputs_into_the_history():
    result = gradx.fit(
        aux_loss,
        P0,
        gradx.sgd(0.05),
        DATA,
        batch_size=B,
        epochs=3,
        key=KEY,
        has_aux=True,
        progress=False,
    )
    params, rows = reference(aux_loss, 0.05, 3)
    np.testing.assert_allclose(result.history["loss"], rows[:, 0], rtol=1e-12)
    np.testing.assert_allclose(result.history["mae"], rows[:, 1], rtol=1e-12)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), result.params, params)


@pytest.mark.parametrize(
    "loss, has_aux, match",
    [
        (
            aux_loss,
            False,
            r"fit: loss_fn must return a scalar, got a tuple of 2; it returns \(loss, aux\): pass has_aux=True",
        ),
        (lambda p, b: [loss_fn(p, b)], False, r"fit: loss_fn must return a scalar, got a list"),
        (
            loss_fn,
            True,
            r"fit: loss_fn must return \(loss, aux\) with has_aux=True, got shape \(\)",
        ),
        (
            lambda p, b: (loss_fn(p, b), {"v": b["y"]}),
            True,
            r"fit: loss_fn's aux must be a dict of scalars, got shape \(5,\) for 'v'",
        ),
        (
            lambda p, b: (loss_fn(p, b), {"skipped": 0.0 * b["y"][0]}),
            True,
            r"fit: loss_fn's aux must not use the name 'skipped'",
        ),
    ],
)
def test_a_non_scalar_loss_is_a_clear_error_not_a_tracer_error(loss, has_aux, match):
    with pytest.raises(ValueError, match=match):
        gradx.fit(
            loss,
            P0,
            gradx.sgd(0.05),
            DATA,
            batch_size=B,
            epochs=1,
            key=KEY,
            has_aux=has_aux,
            progress=False,
        )


NAN_DATA = {"x": X, "y": Y.copy()}
NAN_DATA["y"][7] = np.nan  # the loss and gradients of the batch holding example 7


def test_skip_nonfinite_skips_those_steps_and_counts_them():
    result = gradx.fit(
        aux_loss, P0, gradx.momentum(0.05, momentum=0.5), NAN_DATA, batch_size=B, epochs=3, key=KEY,
        has_aux=True, skip_nonfinite=True, progress=False,
    )  # fmt: skip
    np.testing.assert_array_equal(result.history["skipped"], [1, 1, 1])  # one batch holds #7
    assert np.all(np.isfinite(result.history["loss"]))
    assert int(result.opt_state.count) == 3 * (N // B - 1)  # skipped steps left the state as it was
    # the same numbers as SGD run by hand over the finite batches only
    unskipped = gradx.fit(
        aux_loss, P0, gradx.sgd(0.05), NAN_DATA, batch_size=B, epochs=2, key=KEY, has_aux=True,
        skip_nonfinite=True, progress=False,
    )  # fmt: skip
    params, rows = reference(aux_loss, 0.05, 2, skip=True, data=NAN_DATA)
    np.testing.assert_allclose(unskipped.history["loss"], rows[:, 0], rtol=1e-12)
    np.testing.assert_allclose(unskipped.history["mae"], rows[:, 1], rtol=1e-12)
    np.testing.assert_array_equal(unskipped.history["skipped"], rows[:, 2])
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), unskipped.params, params
    )


def test_a_non_finite_loss_warns_once_naming_the_epoch():
    with pytest.warns(RuntimeWarning, match=r"fit: the training loss of epoch 0 is nan") as record:
        result = gradx.fit(
            loss_fn, P0, gradx.sgd(0.05), NAN_DATA, batch_size=B, epochs=3, key=KEY, progress=False
        )
    assert len(record) == 1 and not np.isfinite(result.history["loss"]).any()


@pytest.mark.parametrize("flag", ["has_aux", "skip_nonfinite", "resume", "overwrite", "progress"])
@pytest.mark.parametrize("data", [DATA, batches], ids=["arrays", "stream"])
def test_a_flag_that_is_not_a_bool_is_refused_not_taken_as_true(flag, data):
    # bool("false") is True: such a flag must be refused, never read as its truth value.
    with pytest.raises(TypeError, match=f"fit: {flag} must be a bool, got 'false'"):
        gradx.fit(
            loss_fn, P0, gradx.sgd(0.05), data, batch_size=B, epochs=1, key=KEY,
            **{"progress": False, flag: "false"},
        )  # fmt: skip


@pytest.mark.parametrize(
    "name, mode",
    [
        ("loss", "min"), ("val_loss", "min"), ("eval_mse", "min"), ("val_mae", "min"),
        ("mean_squared_error", "min"), ("top1_err", "min"), ("cross_entropy", "min"),
        ("acc", "max"), ("val_accuracy", "max"), ("test_acc", "max"), ("val_auc", "max"),
        ("f1", "max"), ("precision", "max"), ("val_recall", "max"),
    ],
)  # fmt: skip
def test_metric_mode_reads_the_direction_from_the_name(name, mode):
    assert metric_mode("f", name) == mode
    assert metric_mode("f", name, "min") == "min" and metric_mode("f", name, "max") == "max"


@pytest.mark.parametrize("name", ["eval", "val", "grad_norm", "acc_loss"])
def test_metric_mode_refuses_a_name_of_unknown_direction(name):
    with pytest.raises(ValueError, match=rf"f: metric must have a name .*got '{name}'.*"
                       r"pass mode='min' or mode='max'"):  # fmt: skip
        metric_mode("f", name)
    with pytest.raises(ValueError, match=rf"EarlyStopping: monitor must .*got '{name}'"):
        EarlyStopping(name)
    with pytest.raises(ValueError, match=rf"ReduceLROnPlateau: monitor must .*got '{name}'"):
        ReduceLROnPlateau(name)
    assert EarlyStopping(name, mode="max").mode == "max"  # an explicit mode wins
    with pytest.raises(ValueError, match=r"f: mode must be 'auto', 'min' or 'max', got 'up'"):
        metric_mode("f", "loss", "up")


def test_reduce_lr_on_plateau_refuses_a_schedule_before_the_first_epoch():
    epochs = []
    schedule = optax.linear_schedule(0.05, 0.01, 100)
    kw = dict(batch_size=B, epochs=3, key=KEY, progress=False)
    reduce = ReduceLROnPlateau(patience=1)
    with pytest.raises(
        ValueError,
        match=r"fit: ReduceLROnPlateau\(hyperparameter='learning_rate'\) must find a constant "
        r"learning_rate .*follows a schedule.*optax.contrib.reduce_on_plateau",
    ):
        gradx.fit(loss_fn, P0, gradx.sgd(schedule), DATA,
                  callbacks=[lambda e, *_: epochs.append(e), reduce], **kw)  # fmt: skip
    assert epochs == []  # refused before training, not at the first plateau
    with pytest.raises(
        ValueError, match=r"fit: ReduceLROnPlateau: hyperparameter must be one of .*\[\]"
    ):
        gradx.fit(loss_fn, P0, optax.sgd(0.05), DATA, callbacks=[reduce], **kw)
    streamed = gradx.sgd(schedule)  # streamed data: the same check
    with pytest.raises(ValueError, match=r"fit: ReduceLROnPlateau\(hyperparameter='learning"):
        gradx.fit(loss_fn, P0, streamed, batches, callbacks=[reduce], **kw)
    # A constant learning rate trains (the fix the message gives).
    gradx.fit(loss_fn, P0, gradx.sgd(0.05), DATA, callbacks=[reduce], **kw)


def test_callbacks_must_be_a_list_of_instances():
    kw = dict(batch_size=B, epochs=1, key=KEY, progress=False)
    with pytest.raises(
        TypeError,
        match=r"fit: callbacks must be functions .*got the class EarlyStopping; instantiate "
        r"it: EarlyStopping\(\.\.\.\)",
    ):
        gradx.fit(loss_fn, P0, gradx.sgd(0.05), DATA, callbacks=[EarlyStopping], **kw)
    with pytest.raises(TypeError, match=r"fit: callbacks must be a list of callbacks"):
        gradx.fit(loss_fn, P0, gradx.sgd(0.05), DATA, callbacks=EarlyStopping(), **kw)


def test_a_nan_gradient_at_the_last_step_warns_though_the_loss_is_finite():
    def loss(params, batch):  # finite at w = 0, its gradient infinite: adam's update is NaN
        del batch
        return jnp.sum(jnp.sqrt(params["w"]))

    for data in (DATA, lambda epoch: iter([DATA])):
        with pytest.warns(
            RuntimeWarning,
            match=r"fit: the params after epoch 0 are not finite, though its mean training "
            r"loss is 0.0 .* pass skip_nonfinite=True",
        ) as record:
            result = gradx.fit(
                loss, P0, gradx.adam(0.1), data, batch_size=None, epochs=2, key=None,
                progress=False,
            )  # fmt: skip
        assert len(record) == 1 and np.isnan(result.params["w"]).all()
        assert np.isfinite(result.history["loss"][0])


def _fit_with(callbacks, flat, epochs=3):
    return gradx.fit(
        loss_fn, P0, gradx.adam(0.05), DATA, batch_size=B, epochs=epochs, key=KEY,
        callbacks=callbacks, flat=flat, progress=False,
    )  # fmt: skip


@pytest.mark.parametrize("flat", [None, False], ids=["packed", "leaf_by_leaf"])
def test_a_state_changed_in_place_by_a_callback_is_ignored_in_both_layouts(flat):
    def in_place(epoch, logs, params, opt_state):
        opt_state.hyperparams["learning_rate"] = jnp.asarray(0.5, jnp.float32)
        params["b"] = jnp.asarray(100.0)

    def returned(epoch, logs, params, opt_state):
        opt_state.hyperparams["learning_rate"] = jnp.asarray(0.5, jnp.float32)
        return Action(opt_state=opt_state)

    plain = _fit_with(None, flat=False)
    ignored = _fit_with([in_place], flat)
    np.testing.assert_array_equal(ignored.history["loss"], plain.history["loss"])
    assert float(gradx.hyperparams(ignored.opt_state)["learning_rate"]) == np.float32(0.05)
    # the documented way: return it in an Action, the same in both layouts
    changed = _fit_with([returned], flat)
    reference = _fit_with([returned], flat=False)
    np.testing.assert_array_equal(changed.history["loss"], reference.history["loss"])
    assert float(gradx.hyperparams(changed.opt_state)["learning_rate"]) == np.float32(0.5)
    assert not np.array_equal(changed.history["loss"], plain.history["loss"])


@pytest.mark.parametrize(
    "new, match",
    [
        (lambda p: {"w": p["w"]}, r"structure PyTreeDef\(\{'w': \*\}\) vs"),
        (lambda p: {**p, "w": p["w"][:2]}, r"\['w'\]: shape \(2,\) dtype float64 vs shape \(3,\)"),
        (lambda p: {**p, "b": p["b"].astype(jnp.float32)}, r"\['b'\]: shape \(\) dtype float32"),
    ],
)
def test_an_action_with_params_of_another_structure_shape_or_dtype_is_refused(new, match):
    def callback(epoch, logs, params, opt_state):
        return Action(params=new(params))

    with pytest.raises(
        ValueError,
        match=rf"fit: callback <function .*callback.*> returned Action\(params=\.\.\.\), which "
        rf"must match the structure, shapes and dtypes of the params .*{match}",
    ):
        _fit_with([callback], None, epochs=2)
    state = lambda epoch, logs, params, opt_state: Action(opt_state=(opt_state,))
    with pytest.raises(ValueError, match=r"returned Action\(opt_state=...\), which must match"):
        _fit_with([state], None, epochs=2)


def test_a_nan_never_improves_not_even_at_the_first_epoch():
    stop = EarlyStopping("loss", patience=2, restore_best_weights=True)
    actions = []
    for epoch, value in enumerate([np.nan, 1.0, 0.5, np.nan, np.nan]):
        w = {"w": jnp.array(float(epoch))}
        actions.append(stop.on_epoch_end(epoch, {"loss": value}, w, None))
    # the NaN of epoch 0 is no best: 1.0 and 0.5 improve, the two NaNs after them wait
    assert actions == [None, None, None, None, Action(stop=True)]
    assert (stop.stopped_epoch, stop.best_epoch, stop.best) == (4, 2, 0.5)
    assert float(stop.on_train_end({"w": jnp.array(9.0)}, None).params["w"]) == 2.0
    maximize = EarlyStopping("acc", patience=5)
    maximize.on_epoch_end(0, {"acc": np.nan}, {}, None)
    assert maximize.best is None and maximize.wait == 1
    plateau = ReduceLROnPlateau(patience=5)
    plateau.on_epoch_end(0, {"loss": np.nan}, P0, gradx.sgd(1.0).init(P0))
    assert (plateau.best, plateau.wait) == (np.inf, 1)


def _restoring():
    return EarlyStopping("val", patience=100, mode="min", restore_best_weights=True)


def _close(got, want):
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("flat", [None, False], ids=["packed", "leaf_by_leaf"])
def test_restore_best_weights_with_schedule_free_returns_the_x_that_was_scored(flat):
    # metrics score x, computed from y and the state's z: the best epoch's y with the last
    # epoch's z would be a point no epoch evaluated
    common = dict(batch_size=B, key=KEY, eval_fn=val_fn, eval_data=DATA, progress=False)
    opt = gradx.schedule_free_sgd(0.2)
    run = gradx.fit(loss_fn, P0, opt, DATA, epochs=8, callbacks=[_restoring()], flat=flat, **common)
    best_epoch = int(np.argmin(run.history["val"]))
    assert 0 < best_epoch < 7  # the test has teeth: the last epoch is not the best
    np.testing.assert_allclose(
        val_fn(run.params, DATA)["val"], run.history["val"][best_epoch], rtol=1e-12
    )
    best = gradx.fit(loss_fn, P0, opt, DATA, epochs=best_epoch + 1, flat=False, **common)
    _close(run.params, best.params)
    _close(run.train_params, best.train_params)  # y and the state of that epoch
    _close(run.opt_state, best.opt_state)


def test_restore_best_weights_with_eval_on_ema_returns_the_average_that_was_scored():
    common = dict(
        batch_size=B, key=KEY, eval_fn=val_fn, eval_data=DATA, ema=0.9, eval_on="ema",
        progress=False,
    )  # fmt: skip
    run = gradx.fit(
        loss_fn, P0, gradx.adam(0.05), DATA, epochs=6, callbacks=[_restoring()], **common
    )
    free = gradx.fit(loss_fn, P0, gradx.adam(0.05), DATA, epochs=6, **common)
    best_epoch = int(np.argmin(run.history["val"]))
    assert 0 < best_epoch < 5
    np.testing.assert_allclose(
        val_fn(run.ema_params, DATA)["val"], run.history["val"][best_epoch], rtol=1e-12
    )
    best = gradx.fit(loss_fn, P0, gradx.adam(0.05), DATA, epochs=best_epoch + 1, **common)
    _close(run.ema_params, best.ema_params)  # the best epoch's average
    _close(run.params, best.params)  # and its params
    _close(run.opt_state, free.opt_state)  # the optimizer state stays the last one (Keras)


@pytest.mark.parametrize(
    "opt, kwargs, resumed_flat",
    [
        (gradx.schedule_free_sgd(0.2), {}, None),
        (gradx.schedule_free_sgd(0.2), {}, False),  # checkpointed packed, resumed leaf by leaf
        (gradx.adam(0.05), {"ema": 0.9, "eval_on": "ema"}, None),
    ],
    ids=["schedule_free", "schedule_free_other_layout", "ema"],
)
def test_restored_best_model_survives_a_resume(opt, kwargs, resumed_flat, tmp_path):
    # the best epoch (3 with Schedule-Free, 1 with ema) is before the interruption at 5
    def fit(extra=(), directory=None, resume=False, flat=None):
        return gradx.fit(
            loss_fn, P0, opt, DATA, batch_size=B, epochs=8, key=KEY, eval_fn=val_fn,
            eval_data=DATA, callbacks=[_restoring(), *extra], checkpoint_dir=directory,
            resume=resume, flat=flat, progress=False, **kwargs,
        )  # fmt: skip

    whole = fit()
    assert int(np.argmin(whole.history["val"])) < 5
    with pytest.raises(Interrupt):
        fit([interrupt_at(5)], tmp_path)
    resumed = fit(directory=tmp_path, resume=True, flat=resumed_flat)
    _close(resumed.history["val"], whole.history["val"])  # the other layout: to rounding
    _close((resumed.params, resumed.opt_state), (whole.params, whole.opt_state))
    if "ema" in kwargs:
        _close(resumed.ema_params, whole.ema_params)


@pytest.mark.parametrize("written_by", ["params_only", "unlabelled"])
@pytest.mark.parametrize(
    "opt, kwargs",
    [(gradx.schedule_free_sgd(0.2), {}), (gradx.adam(0.05), {"ema": 0.9, "eval_on": "ema"})],
    ids=["schedule_free", "ema"],
)
def test_an_earlier_gradx_checkpoint_of_best_weights_still_resumes(
    opt, kwargs, written_by, tmp_path, monkeypatch
):
    # Earlier gradx checkpointed no best_kind: first the params alone ("params_only"), then
    # the params with the average or Schedule-Free state ("unlabelled"). Either resumes, told
    # apart by the count of arrays (not failing to unflatten at the end of every retry): the
    # first restores the best params (its meaning then), the second what this one keeps.
    def fit(extra=(), directory=None, resume=False):
        return gradx.fit(
            loss_fn, P0, opt, DATA, batch_size=B, epochs=8, key=KEY, eval_fn=val_fn,
            eval_data=DATA, callbacks=[_restoring(), *extra], checkpoint_dir=directory,
            resume=resume, progress=False, **kwargs,
        )  # fmt: skip

    current = EarlyStopping.get_state

    def earlier(self):
        state = current(self)
        kind = state.pop("best_kind", None)
        if kind and written_by == "params_only":
            state["best_weights"] = jax.tree.leaves(self.best_weights[0])
        return state

    whole = fit()
    with monkeypatch.context() as patch:
        patch.setattr(EarlyStopping, "get_state", earlier)
        with pytest.raises(Interrupt):
            fit([interrupt_at(5)], tmp_path)
    assert int(np.argmin(whole.history["val"])) < 5  # the best is in the checkpoint
    resumed = fit(directory=tmp_path, resume=True)
    _close(resumed.history["val"], whole.history["val"])
    _close(resumed.train_params, whole.train_params)  # the best epoch's params either way
    if written_by == "unlabelled":  # and the rest of what was scored
        _close(resumed.params, whole.params)
        if "ema" in kwargs:
            _close(resumed.ema_params, whole.ema_params)


def test_an_action_may_return_the_callers_arrays_or_one_array_twice():
    # the next epoch's program donates what an Action returns: fit copies it, so the
    # caller's arrays survive and two leaves holding one array are no double donation
    lr = 0.1
    init = {"w": jnp.zeros(D), "b": jnp.zeros(())}

    def restart(epoch, logs, params, opt_state):
        return Action(params=init) if epoch == 0 else None

    def gd(params, epochs, loss=loss_fn, after=lambda p: p):  # full-batch GD, by hand
        for _ in range(epochs):
            g = jax.grad(loss)(params, DATA)
            params = after(jax.tree.map(lambda p, g: p - lr * g, params, g))
        return params

    common = dict(batch_size=None, key=None, progress=False)
    run = gradx.fit(loss_fn, init, gradx.sgd(lr), DATA, epochs=3, callbacks=[restart], **common)
    assert not init["w"].is_deleted()
    np.testing.assert_array_equal(init["w"], 0.0)
    _close(run.params, gd(init, 2))  # epoch 0 undone, then two epochs from init

    def tied_loss(params, batch):
        return losses.mse(batch["x"] @ (params["a"] + 2 * params["b"]), batch["y"])

    def tie(epoch, logs, params, opt_state):
        return Action(params={"a": params["a"], "b": params["a"]})

    p0 = {"a": jnp.zeros(D), "b": jnp.zeros(D)}
    run = gradx.fit(tied_loss, p0, gradx.sgd(lr), DATA, epochs=3, callbacks=[tie], **common)
    want = gd(p0, 3, tied_loss, lambda p: {"a": p["a"], "b": p["a"]})
    _close(run.params, want)
