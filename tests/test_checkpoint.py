"""Checkpoint and resume: interrupted (an exception, a SIGKILL) and resumed == uninterrupted."""

import functools
import os
import pathlib
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from checkpoint_problem import DATA, EPOCHS, OPT, P0, loss_fn, run

import gradx
import gradx.compat.keras
import gradx.compat.torch
from gradx.callbacks import EarlyStopping, ReduceLROnPlateau

HERE = pathlib.Path(__file__).parent


def assert_same_run(a, b):
    assert set(a.history) == set(b.history)
    for name in a.history:
        np.testing.assert_array_equal(a.history[name], b.history[name])
    for x, y in zip(
        jax.tree.leaves((a.params, a.opt_state)),
        jax.tree.leaves((b.params, b.opt_state)),
        strict=True,
    ):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert jax.tree.structure(a.opt_state) == jax.tree.structure(b.opt_state)


class Interrupt(Exception):
    pass


def interrupt_at(at):
    def callback(epoch, logs, params, opt_state):
        if epoch == at:
            raise Interrupt

    return callback


OPTIMIZERS = {
    "lookahead_adam": lambda: OPT,
    "lookahead_fitted": lambda: gradx.lookahead_fitted(0.05),
    "rprop": lambda: gradx.rprop(0.01),
    "optax_adam": lambda: optax.adam(0.05),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_interrupted_by_a_callback_and_resumed_equals_uninterrupted(name, tmp_path):
    opt = OPTIMIZERS[name]()
    with jax.numpy_dtype_promotion("standard"):  # optax mixes dtypes
        whole = run(opt=opt)
        with pytest.raises(Interrupt):
            run(tmp_path, callbacks=[interrupt_at(3)], opt=opt)
        resumed = run(tmp_path, resume=True, opt=opt)
        again = run(tmp_path, resume=True, opt=opt)  # finished: nothing left to run
    assert_same_run(resumed, whole)
    assert resumed.epoch_seconds.shape == (EPOCHS,)
    assert_same_run(again, whole)


def test_a_killed_process_resumed_equals_the_uninterrupted_run(tmp_path):
    ckpt, out = tmp_path / "ckpt", tmp_path / "out.npz"
    worker = [sys.executable, str(HERE / "checkpoint_worker.py"), str(ckpt), str(out)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    killed = subprocess.run([*worker, "3"], env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not out.exists()
    done = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    assert done[-1] == 3  # epochs 0, 1, 2 were saved; the kill came in epoch 3
    resumed = subprocess.run([*worker, "-1"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole = run()
    got = np.load(out)
    np.testing.assert_array_equal(got["loss"], whole.history["loss"])
    leaves = jax.tree.leaves((whole.params, whole.opt_state))
    assert len(got.files) == len(leaves) + 1
    for i, x in enumerate(leaves):
        np.testing.assert_array_equal(got[f"arr_{i}"], np.asarray(x))


def test_two_plus_two_epochs_equal_four():
    four = run(epochs=4)
    two = run(epochs=2)
    more = gradx.fit(
        loss_fn, two.params, OPT, DATA, batch_size=4, epochs=4, key=jax.random.key(0),
        opt_state=two.opt_state, initial_epoch=2, progress=False,
    )  # fmt: skip
    assert more.history["loss"].shape == (2,)  # as Keras: the epochs run by this call
    np.testing.assert_array_equal(
        np.concatenate([two.history["loss"], more.history["loss"]]), four.history["loss"]
    )
    for x, y in zip(
        jax.tree.leaves((more.params, more.opt_state)),
        jax.tree.leaves((four.params, four.opt_state)),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # the old behaviour (restart the shuffles at epoch 0) would differ
    restart = gradx.fit(
        loss_fn, two.params, OPT, DATA, batch_size=4, epochs=2, key=jax.random.key(0),
        opt_state=two.opt_state, progress=False,
    )  # fmt: skip
    assert not np.array_equal(restart.history["loss"], more.history["loss"])


def test_callback_counters_are_checkpointed(tmp_path):
    def callbacks():
        return [
            ReduceLROnPlateau(factor=0.5, patience=0, min_delta=10.0),  # reduces every epoch
            EarlyStopping(patience=100, restore_best_weights=True),
        ]

    whole = run(callbacks=callbacks())
    with pytest.raises(Interrupt):
        run(tmp_path, callbacks=[*callbacks(), interrupt_at(2)])
    resumed = run(tmp_path, callbacks=callbacks(), resume=True)
    assert_same_run(resumed, whole)
    lr = gradx.hyperparams(whole.opt_state)["learning_rate"]
    # epoch 0 improves on +inf; epochs 1..5 reduce: the reduced rate is in the state, restored
    assert float(lr) == 0.05 * 0.5 ** (EPOCHS - 1)


def test_resume_rejects_another_optimizer_or_key_and_needs_a_directory(tmp_path):
    run(tmp_path, epochs=2)
    with pytest.raises(
        ValueError,
        match=r"fit: the checkpoint of epoch 2 in .* must match the structure, shapes and dtypes of the optimizer state",
    ):
        run(tmp_path, resume=True, opt=gradx.adam(0.05))
    with pytest.raises(ValueError, match=r"fit: key must be the key of the checkpointed run"):
        gradx.fit(
            loss_fn, P0, OPT, DATA, batch_size=4, epochs=4, key=jax.random.key(1),
            checkpoint_dir=tmp_path, resume=True, progress=False,
        )  # fmt: skip
    with pytest.raises(
        ValueError, match=r"fit: resume=True needs checkpoint_dir, got checkpoint_dir=None"
    ):
        run(None, resume=True)
    with pytest.raises(
        ValueError,
        match=r"fit: initial_epoch must be < epochs .* got initial_epoch=4 with epochs=4",
    ):
        gradx.fit(
            loss_fn,
            P0,
            OPT,
            DATA,
            batch_size=4,
            epochs=4,
            key=jax.random.key(0),
            initial_epoch=4,
            progress=False,
        )
    with pytest.raises(ValueError, match=r"fit: checkpoint_every must be an integer >= 1, got 0"):
        gradx.fit(
            loss_fn,
            P0,
            OPT,
            DATA,
            batch_size=4,
            epochs=1,
            key=jax.random.key(0),
            checkpoint_dir=tmp_path,
            checkpoint_every=0,
            progress=False,
        )


def test_missing_orbax_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "orbax.checkpoint", None)
    with pytest.raises(
        ImportError, match=r"fit: checkpoint_dir needs orbax-checkpoint, which is not installed"
    ):
        run(tmp_path)


def test_a_streamed_fit_resumes_exactly(tmp_path):
    def batches(epoch):  # restartable at any epoch: the order depends on the epoch only
        order = np.random.default_rng(epoch).permutation(len(DATA["y"]))
        for i in range(0, len(order), 4):  # the last batch (3 examples) is dropped
            yield {k: np.asarray(v)[order[i : i + 4]] for k, v in DATA.items()}

    def fit(directory=None, **kwargs):
        return gradx.fit(
            loss_fn, P0, OPT, batches, batch_size=4, epochs=EPOCHS, key=None,
            steps_per_execution=3, checkpoint_dir=directory, progress=False, **kwargs,
        )  # fmt: skip

    whole = fit()
    with pytest.raises(Interrupt):
        fit(tmp_path, callbacks=[interrupt_at(2)])
    resumed = fit(tmp_path, resume=True)
    assert_same_run(resumed, whole)
    assert (resumed.steps_per_epoch, resumed.dropped_per_epoch) == (4, 3)


# ----------------------------------------------------------------------------- raw restore
# orbax restored without a target gives plain dicts (a NamedTuple by its field names) and
# lists; ``jax.tree.leaves`` takes a dict's keys in sorted order, so the recipe below rebuilds
# a state only if every state's fields are in sorted order.

RAW_PARAMS = {
    "matrix": jnp.asarray([[0.5, -1.0, 2.0], [0.25, 1.5, -0.75]], jnp.float32),
    "vector": jnp.asarray([0.3, -0.2], jnp.float32),
    "scalar": jnp.asarray(0.7, jnp.float32),
}


def _raw_builds():
    torch, keras = gradx.compat.torch, gradx.compat.keras
    builds = {name: functools.partial(make, 0.05) for name, make in gradx.OPTIMIZERS.items()}
    builds.update({f"torch.{n}": getattr(torch, n) for n in torch.__all__})
    builds.update({f"keras.{n}": getattr(keras, n) for n in keras.__all__})
    builds.update(
        {
            "torch.SGD(momentum, nesterov)": lambda: torch.SGD(momentum=0.9, nesterov=True),
            "torch.RMSprop(centered, momentum)": lambda: torch.RMSprop(centered=True, momentum=0.9),
            "torch.Adagrad(lr_decay)": lambda: torch.Adagrad(lr_decay=0.1),
            "torch.Adam(amsgrad, maximize)": lambda: torch.Adam(amsgrad=True, maximize=True),
            "keras.SGD(momentum)": lambda: keras.SGD(momentum=0.9),
            "keras.RMSprop(centered, momentum)": lambda: keras.RMSprop(centered=True, momentum=0.9),
            "keras.Adam(amsgrad, clipnorm)": lambda: keras.Adam(amsgrad=True, clipnorm=1.0),
            "rmsprop(centered)": lambda: gradx.rmsprop(0.05, centered=True),
            "momentum(scheduled)": lambda: gradx.momentum(
                optax.schedules.linear_schedule(0.05, 0.01, 5)
            ),
            "flat(adam)": lambda: gradx.flat(gradx.adam(0.05), max_leaf_size=4),
            "flat(lookahead_fitted)": lambda: gradx.flat(gradx.lookahead_fitted(0.05)),
            # a tuple of more than 10 states: orbax restores it as a list, in order
            "chain of 11": lambda: optax.chain(*(gradx.adam(0.01 * (i + 1)) for i in range(11))),
        }
    )
    return builds


RAW_BUILDS = _raw_builds()


def _raw_grads(k):
    return jax.tree.map(lambda p: jnp.sin((k + 1) * p + 0.3 * k).astype(p.dtype), RAW_PARAMS)


def _raw_update(opt, state, params, k):
    return opt.update(_raw_grads(k), state, params, value=jnp.asarray(1 / (k + 1), jnp.float32))


@pytest.mark.parametrize("name", RAW_BUILDS)
def test_a_state_restored_without_a_target_unflattens_into_the_same_state(name, tmp_path):
    import orbax.checkpoint as ocp

    opt = RAW_BUILDS[name]()
    params, state = RAW_PARAMS, opt.init(RAW_PARAMS)
    for k in range(3):  # the moments (and lookahead's slow weights) now differ from each other
        updates, state = _raw_update(opt, state, params, k)
        params = optax.apply_updates(params, updates)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "state", state)
    with ocp.StandardCheckpointer() as checkpointer:
        raw = checkpointer.restore(tmp_path / "state")  # no target: dicts and lists
    back = jax.tree.unflatten(jax.tree.structure(opt.init(RAW_PARAMS)), jax.tree.leaves(raw))
    for (path, want), got in zip(
        jax.tree_util.tree_flatten_with_path(state)[0], jax.tree.leaves(back), strict=True
    ):
        where = jax.tree_util.keystr(path)
        assert np.shape(got) == np.shape(want), where
        assert np.asarray(got).dtype == np.asarray(want).dtype, where
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=where)
    want_updates, want_state = _raw_update(opt, state, params, 3)
    got_updates, got_state = _raw_update(opt, back, params, 3)
    jax.tree.map(np.testing.assert_array_equal, got_updates, want_updates)
    jax.tree.map(np.testing.assert_array_equal, got_state, want_state)


def _named_tuple_types(tree):
    found = set()

    def walk(node):
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            found.add(type(node))
        if isinstance(node, (tuple, list)):
            for child in node:
                walk(child)
        elif isinstance(node, dict):
            for child in node.values():
                walk(child)

    walk(tree)
    return found


def test_every_state_class_has_its_fields_in_sorted_order():
    reached = set()
    for make in RAW_BUILDS.values():
        reached |= _named_tuple_types(make().init(RAW_PARAMS))
    reached = {cls for cls in reached if cls.__module__.startswith("gradx")}
    for cls in reached:
        assert cls._fields == tuple(sorted(cls._fields)), cls.__qualname__
    # every state class gradx defines is reached by one of the builds above
    defined = {
        value
        for module_name, module in list(sys.modules.items())
        if module_name == "gradx" or module_name.startswith("gradx.")
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, tuple)
        and hasattr(value, "_fields")
        and value.__name__.endswith("State")
        and value.__module__ == module_name
    }
    ancestors = {base for cls in reached for base in cls.__mro__}
    assert defined - ancestors == set()
