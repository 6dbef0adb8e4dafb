"""Checkpoint and resume: interrupted (an exception, a SIGKILL) and resumed == uninterrupted."""

import functools
import gc
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from typing import NamedTuple

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


class WB(NamedTuple):
    w: jax.Array
    b: jax.Array


STRUCTURES = {
    "tuple": lambda w, b: (w, b),
    "namedtuple": WB,
    "int_keyed_dict": lambda w, b: {0: w, 1: b},
}


@pytest.mark.parametrize("structure", STRUCTURES)
def test_restored_best_weights_keep_the_structure_of_the_params(structure, tmp_path):
    # a checkpoint restores the best weights as a list (no target): they must come back as
    # the params' tuple, NamedTuple or int-keyed dict, not as fit's structure error
    p0 = STRUCTURES[structure](P0["w"], P0["b"])

    def loss(params, batch):
        w, b = jax.tree.leaves(params)
        return loss_fn({"w": w, "b": b}, batch)

    def fit(directory=None, epochs=EPOCHS, extra=(), resume=False):
        # mode="max" on a falling loss: the best epoch is epoch 0, long before the interruption
        early = EarlyStopping(patience=100, mode="max", restore_best_weights=True)
        return gradx.fit(
            loss, p0, OPT, DATA, batch_size=4, epochs=epochs, key=jax.random.key(0),
            callbacks=[early, *extra], checkpoint_dir=directory, resume=resume, progress=False,
        )  # fmt: skip

    whole = fit()
    first = gradx.fit(
        loss, p0, OPT, DATA, batch_size=4, epochs=1, key=jax.random.key(0), progress=False
    )
    with pytest.raises(Interrupt):
        fit(tmp_path, extra=[interrupt_at(3)])
    resumed = fit(tmp_path, resume=True)  # epochs 3..5, then the best of the checkpoint
    again = fit(tmp_path, resume=True)  # finished: nothing left to run, only the restore
    for got in (resumed, again):
        assert_same_run(got, whole)
        assert jax.tree.structure(got.params) == jax.tree.structure(p0)
    for x, y in zip(jax.tree.leaves(whole.params), jax.tree.leaves(first.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # epoch 0's weights


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
    # one directory, one run, for streams too
    with pytest.raises(ValueError, match=r"fit: checkpoint_dir .* holds the checkpoints"):
        fit(tmp_path)
    with pytest.raises(ValueError, match=r"was written by another run: steps_per_epoch"):
        fit(tmp_path, resume=True, steps_per_epoch=3)
    assert_same_run(fit(tmp_path, overwrite=True), whole)


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
    # torch's Muon takes matrices only (RAW_PARAMS has a vector): gradx.muon below stands in
    builds.update({f"torch.{n}": getattr(torch, n) for n in torch.__all__ if n != "Muon"})
    builds.update({f"keras.{n}": getattr(keras, n) for n in keras.__all__})
    builds.update(
        {
            f"optax.{n}": functools.partial(getattr(gradx.compat.optax, n), 0.05)
            for n in ("sgd", "adam", "adamw", "nadam", "nadamw", "amsgrad", "adamax", "adagrad",
                      "rmsprop", "adadelta", "rprop")
        }
    )  # fmt: skip
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
            "lion": lambda: gradx.lion(0.05),
            "lamb": lambda: gradx.lamb(0.05, weight_decay=0.01),
            "radam": lambda: gradx.radam(0.05),
            "adopt": lambda: gradx.adopt(0.05),
            "muon": lambda: gradx.muon(0.05, weight_decay=0.01),
            "adafactor": lambda: gradx.adafactor(
                0.05, min_dim_size_to_factor=2, momentum=0.9, weight_decay_rate=0.01
            ),
            "schedule_free_adamw(warmup)": lambda: gradx.schedule_free_adamw(0.05, 2),
            "momentum(scheduled)": lambda: gradx.momentum(
                optax.schedules.linear_schedule(0.05, 0.01, 5)
            ),
            "param_groups": lambda: gradx.param_groups(
                gradx.adamw(0.05), no_decay=("^vector$", {"weight_decay": 0.0})
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


# ---------------------------------------------------------------- one directory, one run


def adam_run(directory, lr, resume=False, callbacks=None, **kwargs):
    return run(directory, callbacks=callbacks, resume=resume, opt=gradx.adam(lr), **kwargs)


def test_a_fresh_fit_into_a_used_directory_refuses_and_resume_refuses_another_run(tmp_path):
    old = adam_run(tmp_path, 1e-2)
    # the new run (another learning rate) must not delete the old checkpoints one per save
    with pytest.raises(
        ValueError,
        match=rf"fit: checkpoint_dir {tmp_path} holds the checkpoints of epochs \[5, 6\] of an "
        r"earlier run, which a fresh fit would replace: pass resume=True .* another "
        r"checkpoint_dir, or pass overwrite=True",
    ):
        adam_run(tmp_path, 3e-2, callbacks=[interrupt_at(1)])
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [5, 6]
    # resuming with another learning rate must not return the old run's result
    with pytest.raises(
        ValueError,
        match=r"fit: the checkpoint of epoch 6 in .* was written by another run: "
        r"learning_rate \(at the start\) was 0\.01 there, 0\.03 now; resume with "
        r"the same arguments, use another checkpoint_dir, or pass overwrite=True",
    ):
        adam_run(tmp_path, 3e-2, resume=True)
    with pytest.raises(ValueError, match=r"fit: .* was written by another run: batch_size"):
        gradx.fit(
            loss_fn, P0, gradx.adam(1e-2), DATA, batch_size=5, epochs=EPOCHS,
            key=jax.random.key(0), checkpoint_dir=tmp_path, resume=True, progress=False,
        )  # fmt: skip
    # the same run resumes (finished: nothing left to run)
    assert_same_run(adam_run(tmp_path, 1e-2, resume=True), old)
    # overwrite=True deletes them before the first epoch: the new run's checkpoints only
    with pytest.raises(Interrupt):
        adam_run(tmp_path, 3e-2, callbacks=[interrupt_at(1)], overwrite=True)
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [1]
    new = adam_run(tmp_path, 3e-2, resume=True)
    assert_same_run(new, adam_run(None, 3e-2))
    assert not np.array_equal(new.params["w"], old.params["w"])
    with pytest.raises(ValueError, match=r"fit: overwrite=True deletes .* pass one of them"):
        adam_run(tmp_path, 3e-2, resume=True, overwrite=True)
    with pytest.raises(ValueError, match=r"fit: overwrite=True needs checkpoint_dir"):
        adam_run(None, 3e-2, overwrite=True)


def test_a_second_fit_into_a_directory_in_use_is_refused(tmp_path):
    seen = []

    def second(epoch, logs, params, opt_state):
        if epoch == 1:
            with pytest.raises(RuntimeError) as e:
                run(tmp_path, opt=OPT)
            seen.append(str(e.value))

    first = run(tmp_path, callbacks=[second])
    (message,) = seen
    assert message.startswith(f"fit: checkpoint_dir {tmp_path} is in use by another fit")
    assert f"pid {os.getpid()} on host " in message
    assert_same_run(first, run())
    assert (tmp_path / ".gradx.lock").exists()
    # released at the end (and on a crash): the same run resumes
    assert_same_run(run(tmp_path, resume=True), first)


def _flip(path, position):
    data = bytearray(path.read_bytes())
    data[position % len(data)] ^= 0x10
    path.write_bytes(bytes(data))


def wide_fit(directory, resume=False):
    """A fit whose arrays are big enough for orbax to store them apart from its index."""
    x = jax.random.normal(jax.random.key(1), (19, 4096))
    data = {"x": x, "y": jnp.tanh(x @ jnp.linspace(-1.0, 1.0, 4096))}
    return gradx.fit(
        loss_fn, {"w": jnp.zeros(4096), "b": jnp.zeros(())}, OPT, data, batch_size=4,
        epochs=3, key=jax.random.key(0), checkpoint_dir=directory, resume=resume,
        progress=False,
    )  # fmt: skip


# orbax's failed reads leave tensorstore callbacks on a closed event loop ("Exception
# ignored") and, when the garbage collector runs at the wrong moment, a coroutine of its own
# never awaited (a RuntimeWarning that pytest.warns re-raises under filterwarnings=error):
# neither is gradx's, both come after the read; the tests that provoke them wait.
def orbax_read_error(test):
    test = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")(test)
    return pytest.mark.filterwarnings(r"ignore:coroutine '.*' was never awaited:RuntimeWarning")(
        test
    )


def _settle():
    time.sleep(0.5)
    gc.collect()


@orbax_read_error
@pytest.mark.parametrize("position", [0.3, 0.5, 0.8])
def test_a_flipped_byte_in_an_array_is_found_and_the_previous_checkpoint_used(tmp_path, position):
    whole = wide_fit(tmp_path)
    big = max((tmp_path / "3" / "arrays").rglob("*"), key=lambda p: p.stat().st_size)
    _flip(big, int(position * big.stat().st_size))  # mostly: orbax reads other values
    with pytest.warns(
        RuntimeWarning,
        # (?s): orbax's message can span lines (a TensorStore spec), and ".*" must cross them
        match=r"(?s)fit: the checkpoint of epoch 3 in .* is damaged \((an array differs from what "
        r"was written \(checksum\)|orbax cannot read it: .*)\); moved it to .*damaged.3-\d+-\d+ "
        r"and resuming from an older one",
    ):
        resumed = wide_fit(tmp_path, resume=True)
    _settle()
    assert_same_run(resumed, whole)  # epoch 2's checkpoint, then epoch 2 again
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [2, 3]
    # the damaged one is set aside, never deleted: it can still be inspected
    (aside,) = (tmp_path / "damaged").iterdir()
    assert aside.name.startswith("3-") and (aside / "arrays").is_dir()


def test_an_array_read_back_with_other_values_is_found_by_its_checksum(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    whole = run(tmp_path)
    arrays = tmp_path / "6" / "arrays"
    with ocp.StandardCheckpointer() as checkpointer:
        saved = checkpointer.restore(arrays)
        saved["params"][0] = saved["params"][0] + 1e-12  # what a silent corruption reads
        shutil.rmtree(arrays)
        checkpointer.save(arrays, saved)
    with pytest.warns(
        RuntimeWarning,
        match=r"fit: the checkpoint of epoch 6 in .* is damaged \(an array differs from what "
        r"was written \(checksum\)\); moved it to .* and resuming from an older one",
    ):
        resumed = run(tmp_path, resume=True)
    assert_same_run(resumed, whole)


@orbax_read_error
def test_an_unreadable_array_file_falls_back_to_the_previous_checkpoint(tmp_path):
    whole = run(tmp_path)
    for path in (tmp_path / "6" / "arrays" / "d").iterdir():  # orbax's index: a read error
        _flip(path, -9)
    with pytest.warns(
        RuntimeWarning,
        match=r"(?s)fit: the checkpoint of epoch 6 in .* is damaged \(orbax cannot read it: "
        r"ValueError: .*\); moved it to .* and resuming from an older one",
    ):
        resumed = run(tmp_path, resume=True)
    _settle()
    assert_same_run(resumed, whole)  # epoch 5's checkpoint, then epoch 5 again


def test_a_damaged_metadata_file_falls_back_and_none_intact_is_an_error(tmp_path):
    whole = run(tmp_path)
    meta = tmp_path / "6" / "meta" / "metadata"
    meta.write_text(meta.read_text()[:-20])  # truncated: not JSON
    with pytest.warns(RuntimeWarning, match=r"epoch 6 .* is damaged \(its metadata cannot be"):
        assert_same_run(run(tmp_path, resume=True), whole)
    # a valid JSON with one number changed: its checksum differs
    meta = tmp_path / "6" / "meta" / "metadata"
    meta.write_text(meta.read_text().replace('"step": 24', '"step": 25'))
    with pytest.warns(RuntimeWarning, match=r"epoch 6 .* metadata's checksum differs"):
        assert_same_run(run(tmp_path, resume=True), whole)
    for step in ("5", "6"):
        (tmp_path / step / "meta" / "metadata").write_text("{")
    with (
        pytest.warns(RuntimeWarning),
        pytest.raises(
            ValueError,
            match=rf"fit: checkpoint_dir {tmp_path} holds no intact checkpoint to resume "
            r"\(epoch 6: its metadata cannot be read: .*; epoch 5: its metadata cannot",
        ),
    ):
        run(tmp_path, resume=True)


def test_a_foreign_checkpoint_is_refused_by_name(tmp_path):
    run(tmp_path, epochs=2)
    meta = tmp_path / "2" / "meta" / "metadata"
    meta.write_text('{"something": "else"}')
    with pytest.raises(
        ValueError,
        match=r"fit: the checkpoint of epoch 2 in .* must be a gradx fit checkpoint of format "
        r"2, got format None",
    ):
        run(tmp_path, resume=True)
    ocp = pytest.importorskip("orbax.checkpoint")
    other = tmp_path / "other"
    with ocp.CheckpointManager(other) as manager:
        manager.save(3, args=ocp.args.StandardSave({"w": np.ones(3)}))
    with pytest.raises(
        ValueError,
        match=r"fit: the checkpoint of epoch 3 in .* must be a gradx fit checkpoint, got one "
        r"without gradx's metadata",
    ):
        run(other, resume=True)


def test_resume_refuses_another_optimizer_of_the_same_state_layout(tmp_path):
    run(tmp_path, epochs=2, opt=gradx.momentum(0.05))
    with pytest.raises(
        ValueError,
        match=r"fit: the checkpoint of epoch 2 in .* was written by another run: optimizer "
        r"state classes: HyperparamsState\[.*momentum.*\] there, HyperparamsState\[.*nesterov",
    ):
        run(tmp_path, epochs=2, opt=gradx.nesterov(0.05), resume=True)


def test_callback_counters_are_restored_by_name_in_any_order(tmp_path):
    def reduce():
        return ReduceLROnPlateau(factor=0.5, patience=0, min_delta=10.0)

    def stop():
        return EarlyStopping(patience=100, restore_best_weights=True)

    whole = run(callbacks=[reduce(), stop()])
    with pytest.raises(Interrupt):
        run(tmp_path, callbacks=[reduce(), stop(), interrupt_at(2)])
    assert_same_run(run(tmp_path, callbacks=[stop(), reduce()], resume=True), whole)


def test_two_callbacks_of_one_class_in_swapped_order_keep_their_own_counters(tmp_path):
    def eval_fn(params, data):
        pred = jnp.tanh(data["x"] @ params["w"] + params["b"])
        return {
            "mse": jnp.mean((pred - data["y"]) ** 2),
            "mae": jnp.mean(jnp.abs(pred - data["y"])),
        }

    def fit(callbacks, directory=None, resume=False):
        return gradx.fit(
            loss_fn, P0, OPT, DATA, batch_size=4, epochs=EPOCHS, key=jax.random.key(0),
            eval_fn=eval_fn, callbacks=callbacks, checkpoint_dir=directory, resume=resume,
            progress=False,
        )  # fmt: skip

    a, b = EarlyStopping("mse", patience=100), EarlyStopping("mae", patience=100, min_delta=0.1)
    whole = fit([a, b])
    with pytest.raises(Interrupt):
        fit([EarlyStopping("mse", patience=100),
             EarlyStopping("mae", patience=100, min_delta=0.1), interrupt_at(3)], tmp_path)  # fmt: skip
    b2, a2 = EarlyStopping("mae", patience=100, min_delta=0.1), EarlyStopping("mse", patience=100)
    assert_same_run(fit([b2, a2], tmp_path, resume=True), whole)
    for got, want in ((a2, a), (b2, b)):
        assert (got.wait, got.best, got.best_epoch) == (want.wait, want.best, want.best_epoch)
    assert a.wait != b.wait  # a swap would show
    # two of one class and monitor are told apart by their settings: a swap is refused
    with pytest.raises(Interrupt):
        fit(
            [EarlyStopping(patience=3), EarlyStopping(patience=100), interrupt_at(1)],
            tmp_path / "2",
        )
    with pytest.raises(ValueError, match=r"was written by another run: the callbacks differ"):
        fit([EarlyStopping(patience=100), EarlyStopping(patience=3)], tmp_path / "2", resume=True)


# Optimizers that differ only in how they were built: a flag, a mask, an inner optimizer's
# flag, a number an optax transformation or schedule holds. Resuming one's run with the
# other would continue it with another rule.
SAME_STATE_OTHER_RULE = {
    "nesterov": (gradx.sgd(0.05, 0.9), gradx.sgd(0.05, 0.9, nesterov=True), "nesterov"),
    "max_of": (gradx.amsgrad(0.05), gradx.amsgrad(0.05, max_of="v_hat"), "max_of"),
    "irprop_minus": (gradx.rprop(0.01), gradx.rprop(0.01, irprop_minus=True), "irprop_minus"),
    "mask": (gradx.adamw(0.05), gradx.adamw(0.05, mask={"w": True, "b": False}), "mask"),
    "inner": (
        gradx.lookahead(gradx.sgd(0.05, 0.9)),
        gradx.lookahead(gradx.sgd(0.05, 0.9, nesterov=True)),
        "inner.nesterov",
    ),
    "clip": (
        optax.chain(optax.clip_by_global_norm(1.0), gradx.adam(0.05)),
        optax.chain(optax.clip_by_global_norm(2.0), gradx.adam(0.05)),
        "max_norm",
    ),
    "schedule": (
        gradx.adam(optax.cosine_decay_schedule(0.05, 100)),
        gradx.adam(optax.cosine_decay_schedule(0.05, 200)),
        "decay_steps",
    ),
}


@pytest.mark.parametrize("name", SAME_STATE_OTHER_RULE)
def test_resume_refuses_an_optimizer_built_with_other_arguments(name, tmp_path):
    before, after, argument = SAME_STATE_OTHER_RULE[name]
    with jax.numpy_dtype_promotion("standard"):  # optax mixes dtypes
        run(tmp_path, epochs=2, opt=before)
        with pytest.raises(
            ValueError,
            match=rf"fit: the checkpoint of epoch 2 in .* was written by another run: the "
            rf"optimizer arguments differ: optimizer\S*{argument} was ",
        ):
            run(tmp_path, epochs=4, opt=after, resume=True)
        # the same arguments, built again: the run resumes
        resumed = run(tmp_path, epochs=4, opt=SAME_STATE_OTHER_RULE[name][0], resume=True)
    assert len(resumed.history["loss"]) == 4


def test_a_dtype_is_described_alike_however_it_is_spelled():
    from gradx._training.identity import optimizer_arguments

    spellings = ("int8", jnp.int8, np.dtype("int8")), ("bfloat16", jnp.bfloat16)
    for names in spellings:
        described = [optimizer_arguments(gradx.adam(0.1, state_dtype=d)) for d in names]
        assert all(d == described[0] for d in described), described
    f32 = [optimizer_arguments(gradx.adam(0.1, mu_dtype=d)) for d in ("float32", jnp.float32)]
    assert f32[0] == f32[1]


def test_an_optimizer_is_described_alike_in_another_process():
    """The description a checkpoint records is the same when a new process builds the same
    optimizer (no object ids, no set order): else a resume would be refused."""
    from gradx._training.identity import optimizer_arguments

    script = f"""
import json, sys
sys.path.insert(0, {str(HERE)!r})
import jax
jax.config.update("jax_enable_x64", True)
from described_optimizers import optimizers
from gradx._training.identity import optimizer_arguments
print(json.dumps({{k: optimizer_arguments(o) for k, o in optimizers().items()}}, sort_keys=True))
"""
    from described_optimizers import optimizers

    here = {k: optimizer_arguments(o) for k, o in optimizers().items()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    there = json.loads(done.stdout)
    assert json.dumps(here, sort_keys=True) == json.dumps(there, sort_keys=True)
    assert len(here) >= len(gradx.OPTIMIZERS)
    assert all(len(d) > 1 for d in here.values())  # each described by its arguments


def test_a_streamed_resume_refuses_other_batches(tmp_path):
    def stream(size, dtype=np.float64):
        def batches(epoch):
            order = np.random.default_rng(epoch).permutation(len(DATA["y"]))
            for i in range(0, len(order) - size + 1, size):
                yield {k: np.asarray(v)[order[i : i + size]].astype(dtype) for k, v in DATA.items()}

        return batches

    def fit(batches, directory, **kwargs):
        return gradx.fit(
            loss_fn, P0, OPT, batches, batch_size=None, key=None, checkpoint_dir=directory,
            progress=False, **kwargs,
        )  # fmt: skip

    fit(stream(4), tmp_path, epochs=2)
    for other, got in ((stream(2), r"got 2 of"), (stream(4, np.float32), r"\['float32'")):
        with pytest.raises(
            ValueError,
            match=r"fit: data must yield the batches of the run it resumes \(recorded in its "
            rf"checkpoint\): 4 examples .*{got}",
        ):
            fit(other, tmp_path, epochs=4, resume=True)
    assert len(fit(stream(4), tmp_path, epochs=4, resume=True).history["loss"]) == 4


def test_the_same_call_with_initial_epoch_resumes_after_a_crash(tmp_path):
    half = run(epochs=2)
    call = dict(epochs=EPOCHS, initial_epoch=2, opt_state=half.opt_state)
    uninterrupted = gradx.fit(
        loss_fn, half.params, OPT, DATA, batch_size=4, key=jax.random.key(0), progress=False,
        **call,
    )  # fmt: skip
    with pytest.raises(Interrupt):
        gradx.fit(
            loss_fn, half.params, OPT, DATA, batch_size=4, key=jax.random.key(0),
            progress=False, checkpoint_dir=tmp_path, callbacks=[interrupt_at(4)], **call,
        )  # fmt: skip
    for initial_epoch in (2, 0):  # the same call, or 0: the checkpoint sets the epoch
        resumed = gradx.fit(
            loss_fn, half.params, OPT, DATA, batch_size=4, key=jax.random.key(0),
            progress=False, checkpoint_dir=tmp_path, resume=True,
            **{**call, "initial_epoch": initial_epoch},
        )  # fmt: skip
        assert_same_run(resumed, uninterrupted)
    with pytest.raises(
        ValueError,
        match=r"fit: initial_epoch must be 0 or 2 \(the epoch the checkpoint's run started "
        r"at\) when resume=True finds a checkpoint, which sets the epoch; got 1",
    ):
        gradx.fit(
            loss_fn, half.params, OPT, DATA, batch_size=4, key=jax.random.key(0),
            progress=False, checkpoint_dir=tmp_path, resume=True, **{**call, "initial_epoch": 1},
        )  # fmt: skip


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (
            {"checkpoint_dir": 3},
            r"fit: checkpoint_dir must be a directory's path \(a str or os.PathLike\) or "
            r"None, got 3",
        ),
        (
            {"key": jax.random.split(jax.random.key(0), 2)},
            r"fit: key must be a JAX PRNG key \(one: ",
        ),
        (
            {"key": jax.random.split(jax.random.PRNGKey(0), 2)},
            r"fit: key must be a JAX PRNG key \(one: ",
        ),
        ({"steps_per_execution": 0}, r"fit: steps_per_execution is for streamed data .*got 0"),
    ],
)
def test_fit_refuses_bad_run_arguments_by_name(kwargs, error):
    with pytest.raises((TypeError, ValueError), match=error):
        gradx.fit(
            loss_fn, P0, OPT, DATA, batch_size=4, epochs=1, progress=False,
            **{"key": jax.random.key(0), **kwargs},
        )  # fmt: skip


def test_a_checkpoint_of_float16_moments_from_an_older_gradx_is_named_as_such(
    tmp_path, monkeypatch
):
    # gradx stored the second moments of float16 params in float16 before it kept them in
    # float32: such a checkpoint does not resume as it is, and the error says why, not only
    # "the same code" (which the user did run); with nu_dtype=float16 it resumes as it was
    from gradx._protocol import dtypes, storage
    from gradx._protocol.storage import decode_moments

    current = dtypes.moment_dtype

    def older(fn, name, leaf_dtype, dtype, real):
        if dtype is None and real:
            return dtypes.real_dtype(jnp.dtype(leaf_dtype))
        return current(fn, name, leaf_dtype, dtype, real)

    half = jax.tree.map(lambda p: p.astype(jnp.float16), P0)
    data = jax.tree.map(lambda x: x.astype(jnp.float16), DATA)
    def fit(params=half, opt=None, directory=tmp_path, **kwargs):
        return gradx.fit(
            loss_fn, params, opt or gradx.adam(0.05), data, batch_size=4,
            key=jax.random.key(0), checkpoint_dir=directory, progress=False, **kwargs,
        )  # fmt: skip

    def unchecked(self, moment):  # nor did it refuse a float16 one at update
        return moment if self.policy.kind in ("follow", "float") else decode_moments(moment)

    with monkeypatch.context() as patch:
        patch.setattr(dtypes, "moment_dtype", older)
        patch.setattr(storage.MomentCodec, "decode", unchecked)
        fit(epochs=1)
        whole = fit(epochs=2, directory=None)  # that gradx, without an interruption
    with pytest.raises(
        ValueError,
        match=r"First difference \(checkpoint vs now\): \[\".*nu\['b'\]\", \[\], 'float16'\] "
        r"vs .*'float32'\] \(an earlier gradx stored this array in float16; it now keeps it "
        r"in float32: finish this run with the gradx version that wrote the checkpoint, or, "
        r"for an optimizer state, resume it with that dtype given, e\.g\. nu_dtype=jnp\.float16",
    ):
        fit(epochs=2, resume=True)
    resumed = fit(opt=gradx.adam(0.05, nu_dtype=jnp.float16), epochs=2, resume=True)
    assert_same_run(resumed, whole)
    # params of another dtype are the user's change, not gradx's: no such note
    wide = jax.tree.map(lambda p: p.astype(jnp.float32), half)
    with pytest.raises(ValueError, match=r"must match the structure, shapes and dtypes") as e:
        fit(wide, epochs=2, resume=True)
    assert "earlier gradx" not in str(e.value)


def test_an_int8_checkpoint_and_pickle_of_the_earlier_format_are_refused(tmp_path):
    # recorded by tests/golden/record_int8_checkpoint.py with the gradx of eaad44a, whose
    # int8 moments had bitsandbytes' maps and absmax scales: read with today's maps they would
    # be other numbers, so resuming must refuse and say why, and unpickling must fail
    import pickle

    golden = pathlib.Path(__file__).parent / "golden"
    sys.path.insert(0, str(golden))
    try:
        import record_int8_checkpoint as recorded
    finally:
        sys.path.remove(str(golden))
    directory = tmp_path / "ck"
    shutil.copytree(golden / "int8_checkpoint_eaad44a", directory)
    with pytest.raises(
        ValueError,
        match=r"First difference \(checkpoint vs now\): \[\".*nu\['w'\]\.codes\", \[256\], "
        r"'int8'\] vs \[\".*nu\['w'\]\.absmax\", \[1\], 'float32'\] \(an int8 moment of an "
        r"earlier gradx, stored with other maps and per-block scales that this version "
        r"cannot read: finish this run with the gradx version that wrote the checkpoint\)",
    ):
        gradx.fit(
            recorded.loss_fn, recorded.P0, recorded.optimizer(), recorded.DATA, batch_size=4,
            epochs=2, key=jax.random.key(0), checkpoint_dir=str(directory), resume=True,
            progress=False,
        )  # fmt: skip
    with open(golden / "int8_state_eaad44a.pickle", "rb") as f:
        with pytest.raises(AttributeError, match="UnsignedInt8Moment"):
            pickle.load(f)
