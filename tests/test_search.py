"""gradx.search: spaces, random search, successive halving, PBT, replay, init_fn, mesh.

The mechanics are checked exactly (a copy is bit for bit its source; halving keeps exactly
the top 1/η; only the hyperparameters of a copy change). Runs are compared with ``gradx.fit``
with a tolerance: a vmapped population and an unbatched fit round differently in float32
(see ``gradx.sweep``), so those comparisons run at small learning rates, where the runs stay
within about 1e-5 of each other.
"""

from __future__ import annotations

import itertools
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradx
from gradx._training import population
from gradx.search_space import choice, loguniform, randint, uniform

N, D = 48, 3


def problem():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
    y = x @ jnp.asarray([1.0, -2.0, 0.5], jnp.float32) + jnp.float32(0.3)
    params = {"w": jnp.zeros(D, jnp.float32), "b": jnp.zeros((), jnp.float32)}
    return params, (x, y)


def loss_fn(params, batch):
    x, y = batch
    return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def eval_fn(params, batch):
    return {"val_loss": loss_fn(params, batch)}


SPACE = {"learning_rate": loguniform(1e-3, 3e-2), "b1": uniform(0.5, 0.95)}
RUN = dict(batch_size=8, key=jax.random.key(3), progress=False, eval_fn=eval_fn)


def close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


# ----------------------------------------------------------------------------- spaces


def test_distributions_sample_their_ranges():
    key = jax.random.key(0)
    lu = loguniform(1e-4, 1e-1).sample(key, 4000)
    assert lu.min() >= 1e-4 and lu.max() < 1e-1
    # log10 uniform on [-4, -1): mean −2.5, and a quarter of the mass per decade-and-a-bit.
    assert abs(np.log10(lu).mean() + 2.5) < 0.05
    assert abs(np.mean(lu < 1e-3) - 1 / 3) < 0.03
    u = uniform(0.5, 0.9).sample(key, 4000)
    assert u.min() >= 0.5 and u.max() < 0.9 and abs(u.mean() - 0.7) < 0.01
    c = choice([1e-3, 1e-2, 1e-1]).sample(key, 300)
    assert set(c.tolist()) == {1e-3, 1e-2, 1e-1}
    r = randint(2, 5).sample(key, 300)
    assert set(r.tolist()) == {2.0, 3.0, 4.0}


def test_perturbations_move_and_clip():
    up, down = np.array([True]), np.array([False])
    f = (0.8, 1.25)
    assert uniform(0.0, 1.0).perturb(np.array([0.5]), up, f)[0] == 0.625
    assert uniform(0.0, 1.0).perturb(np.array([0.5]), down, f)[0] == 0.4
    assert uniform(0.0, 1.0).perturb(np.array([0.9]), up, f)[0] == 1.0  # clipped
    assert loguniform(1e-3, 1e-1).perturb(np.array([1.1e-3]), down, f)[0] == 1e-3
    assert choice([1, 2, 4]).perturb(np.array([2.0]), up, f)[0] == 4
    assert choice([1, 2, 4]).perturb(np.array([1.0]), down, f)[0] == 1  # end of the list
    assert randint(1, 10).perturb(np.array([2.0]), up, f)[0] == 3  # at least one step
    assert randint(1, 10).perturb(np.array([9.0]), up, f)[0] == 9


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: uniform(1.0, 1.0), r"uniform: high must be > low \(1.0\), got 1.0"),
        (lambda: loguniform(0.0, 1.0), "loguniform: low must be > 0, got 0.0"),
        (lambda: uniform(0.0, math.inf), "uniform: high must be a finite number, got inf"),
        (lambda: choice([]), "choice: values must be a non-empty sequence"),
        (lambda: choice([1, 1]), "choice: values must be distinct"),
        (lambda: randint(1.5, 3), "randint: low must be an integer, got 1.5"),
    ],
)
def test_bad_distributions_are_refused(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_every_sampled_value_is_checked_against_the_rule():
    params, data = problem()
    opt = gradx.adam(1e-3)
    with pytest.raises(
        ValueError,
        match=r"search: space\['b1'\] must be in \[0, 1\), got 1\.\d+ \(the sampled value of "
        r"member \d+\)",
    ):
        gradx.search(loss_fn, params, opt, data, {"b1": uniform(0.5, 1.5)},
                     num_samples=16, epochs=1, **RUN)  # fmt: skip
    with pytest.raises(ValueError, match=r"space keys must be hyperparameters.*got 'momentum'"):
        gradx.search(loss_fn, params, opt, data, {"momentum": uniform(0.1, 0.5)},
                     num_samples=2, epochs=1, **RUN)  # fmt: skip
    with pytest.raises(ValueError, match="search: eta is an option of method='halving'"):
        gradx.search(loss_fn, params, opt, data, SPACE, num_samples=2, epochs=1, eta=3, **RUN)
    with pytest.raises(ValueError, match="search: method must be one of"):
        gradx.search(loss_fn, params, opt, data, SPACE, method="grid", num_samples=2, epochs=1,
                     **RUN)  # fmt: skip
    with pytest.raises(ValueError, match="search: num_samples must be an integer >= 2"):
        gradx.search(loss_fn, params, opt, data, SPACE, method="pbt", num_samples=1, epochs=2,
                     **RUN)  # fmt: skip
    with pytest.raises(
        ValueError, match=r"metric must be 'loss' or a metric of eval_fn \['val_loss'\]"
    ):
        gradx.search(loss_fn, params, opt, data, SPACE, method="halving", num_samples=3,
                     epochs=2, metric="val_accuracy", **RUN)  # fmt: skip
    with pytest.raises(ValueError, match="search: fraction must be in"):
        gradx.search(loss_fn, params, opt, data, SPACE, method="pbt", num_samples=4, epochs=2,
                     fraction=0.75, **RUN)  # fmt: skip


# ----------------------------------------------------------------------------- random search


def test_one_sample_equals_fit():
    params, data = problem()
    got = gradx.search(loss_fn, params, gradx.adam(1e-3), data, SPACE, num_samples=1, epochs=3,
                       **RUN)  # fmt: skip
    values = {n: float(v[0]) for n, v in got.samples.items()}
    opt = gradx.adam(**values)
    want = gradx.fit(loss_fn, params, opt, data, epochs=3, **RUN)
    close(jax.tree.map(lambda x: x[0], got.params), want.params)
    np.testing.assert_allclose(got.history["loss"][0], want.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(got.history["val_loss"][0], want.history["val_loss"], rtol=1e-5)
    assert got.model_epochs == 3 and got.best("val_loss").index == 0


def test_random_members_are_their_samples_and_chunks_do_not_matter():
    params, data = problem()
    opt = gradx.adam(1e-3)
    got = gradx.search(loss_fn, params, opt, data, SPACE, num_samples=5, epochs=2, **RUN)
    assert got.samples["learning_rate"].dtype == np.float32
    assert len(set(got.samples["learning_rate"].tolist())) == 5
    assert got.model_epochs == 10 and got.population.tolist() == [5, 5]
    for name, v in got.samples.items():  # the value each member trained with, in its state
        np.testing.assert_array_equal(got.opt_state.hyperparams[name], v)
        np.testing.assert_array_equal(got.trajectory[name], np.repeat(v[:, None], 2, axis=1))
    chunked = gradx.search(loss_fn, params, opt, data, SPACE, num_samples=5, epochs=2,
                           chunk_size=2, **RUN)  # fmt: skip
    np.testing.assert_array_equal(chunked.samples["b1"], got.samples["b1"])
    np.testing.assert_allclose(chunked.history["loss"], got.history["loss"], rtol=1e-5)
    k = got.best("val_loss").index
    assert k == int(np.argmin(got.history["val_loss"][:, -1]))


def test_init_fn_gives_each_member_its_own_params():
    _, data = problem()

    def init_fn(key):
        return {"w": jax.random.normal(key, (D,), jnp.float32), "b": jnp.zeros((), jnp.float32)}

    got = gradx.search(loss_fn, None, gradx.sgd(0.01), data, {"learning_rate": 0.01},
                       init_fn=init_fn, num_samples=3, epochs=1, **RUN)  # fmt: skip
    assert got.member_keys.shape == (3,)
    for k in range(3):
        start = init_fn(got.member_keys[k])
        want = gradx.fit(loss_fn, start, gradx.sgd(0.01), data, epochs=1, **RUN)
        close(jax.tree.map(lambda x, k=k: x[k], got.params), want.params)
    assert not np.allclose(got.params["w"][0], got.params["w"][1])
    again = got.replay(2, loss_fn, None, gradx.sgd(0.01), data, init_fn=init_fn,
                       batch_size=8, key=RUN["key"])  # fmt: skip
    close(jax.tree.map(lambda x: x[2], got.params), again.params)


# ----------------------------------------------------------------------------- halving


def test_halving_keeps_exactly_the_top_third_and_continues_them():
    params, data = problem()
    opt = gradx.adam(1e-3)
    kw = dict(num_samples=9, epochs=4, metric="val_loss", mode="min", **RUN)
    got = gradx.search(loss_fn, params, opt, data, SPACE, method="halving", eta=3, **kw)
    full = gradx.search(loss_fn, params, opt, data, SPACE, **kw)  # same samples, all 4 epochs
    np.testing.assert_array_equal(got.samples["learning_rate"], full.samples["learning_rate"])
    # Rungs end after 1 and 3 epochs: 9 -> 3 -> 1 members.
    assert [r.epoch for r in got.rungs] == [1, 3]
    assert got.population.tolist() == [9, 3, 3, 1]
    assert got.model_epochs == 9 * 1 + 3 * 2 + 1 * 1
    first = got.history["val_loss"][:, 0]
    np.testing.assert_array_equal(got.rungs[0].kept, np.sort(np.argsort(first, kind="stable")[:3]))
    second = got.history["val_loss"][got.rungs[0].kept, 2]
    assert got.rungs[1].kept.tolist() == [got.rungs[0].kept[int(np.argmin(second))]]
    # Eliminated members stop: NaN after their last rung; best() only sees the survivor.
    assert got.epochs_trained.tolist() == [
        4 if k in got.rungs[1].kept else 3 if k in got.rungs[0].kept else 1 for k in range(9)
    ]
    assert np.isnan(got.history["loss"][got.epochs_trained < 4, -1]).all()
    assert got.best("val_loss").index == got.rungs[1].kept[0]
    # Survivors continue from their own params and state: their runs are the full runs.
    alive = got.epochs_trained == 4
    np.testing.assert_allclose(got.history["loss"][alive], full.history["loss"][alive], rtol=1e-5)
    out = got.epochs_trained == 1
    np.testing.assert_allclose(got.history["loss"][out, 0], full.history["loss"][out, 0], rtol=1e-5)
    assert np.isnan(got.trajectory["b1"][out, 1:]).all()


# ----------------------------------------------------------------------------- PBT


def test_exploit_copies_bit_for_bit_and_changes_only_hyperparameters():
    params, data = problem()
    pop = gradx.search(loss_fn, params, gradx.adam(1e-3), data, SPACE, num_samples=4, epochs=2,
                       **RUN)  # fmt: skip
    p, s = pop.params, pop.opt_state
    source = np.array([0, 1, 0, 3])  # member 2 copies member 0
    values = {n: np.asarray(v).copy() for n, v in gradx.hyperparams(s).items()}
    values["learning_rate"][2] = values["learning_rate"][0] * np.float32(1.25)
    values["b1"][2] = values["b1"][0] * np.float32(0.8)
    new_p, new_s = population._exploit(p, s, jnp.asarray(source), values)
    p, s, new_p, new_s = jax.tree.map(np.asarray, (p, s, new_p, new_s))
    for leaf, old in zip(jax.tree.leaves(new_p), jax.tree.leaves(p), strict=True):
        np.testing.assert_array_equal(leaf[2], old[0])  # bit for bit
        np.testing.assert_array_equal(leaf[[0, 1, 3]], old[[0, 1, 3]])
    flat_new = jax.tree_util.tree_flatten_with_path(new_s)[0]
    flat_old = jax.tree_util.tree_flatten_with_path(s)[0]
    changed = set()
    for (path, leaf), (_, old) in zip(flat_new, flat_old, strict=True):
        np.testing.assert_array_equal(leaf[[0, 1, 3]], old[[0, 1, 3]])
        if np.array_equal(leaf[2], old[0]):
            continue
        changed.add(jax.tree_util.keystr(path))
    assert changed == {".hyperparams['b1']", ".hyperparams['learning_rate']"}
    assert new_s.hyperparams["learning_rate"][2] == values["learning_rate"][2]
    assert new_s.hyperparams["b1"][2] == values["b1"][2]


def test_pbt_truncation_selection_and_perturbation():
    params, data = problem()
    got = gradx.search(loss_fn, params, gradx.adam(1e-3), data, SPACE, method="pbt",
                       num_samples=8, epochs=4, ready=1, fraction=0.25, resample_probability=0.0,
                       metric="val_loss", **RUN)  # fmt: skip
    assert [c.epoch for c in got.lineage] == [1, 1, 2, 2, 3, 3]
    for epoch in (1, 2, 3):
        copies = [c for c in got.lineage if c.epoch == epoch]
        order = np.argsort(got.history["val_loss"][:, epoch - 1], kind="stable")
        assert sorted(c.member for c in copies) == sorted(order[-2:].tolist())  # the worst 2
        for c in copies:
            assert c.source in order[:2]  # from the best 2
            for name, dist in SPACE.items():
                before = got.trajectory[name][c.source, epoch - 1]
                after = got.trajectory[name][c.member, epoch]
                assert after == np.float32(c.values[name])
                both = dist.perturb(np.array([before] * 2), np.array([False, True]), (0.8, 1.25))
                assert after in both.astype(np.float32), (name, before, after)  # ×0.8 or ×1.25
    assert got.model_epochs == 32 and got.population.tolist() == [8] * 4


def test_pbt_schedule_replays_with_fit():
    params, data = problem()
    opt = gradx.adam(1e-3)
    got = gradx.search(loss_fn, params, opt, data, SPACE, method="pbt", num_samples=4,
                       epochs=4, ready=1, metric="val_loss", **RUN)  # fmt: skip
    # A member whose run was copied at least twice: three segments or more.
    member = max(range(4), key=lambda m: len(got.schedule(m)))
    segments = got.schedule(member)
    assert len(segments) >= 2 and segments[-1].member == member and segments[0].start == 0
    assert all(a.stop == b.start for a, b in itertools.pairwise(segments))
    replayed = got.replay(member, loss_fn, params, opt, data, batch_size=8, key=RUN["key"],
                          eval_fn=eval_fn)  # fmt: skip
    want = np.concatenate([got.history["loss"][s.member, s.start : s.stop] for s in segments])
    np.testing.assert_allclose(replayed.history["loss"], want, rtol=1e-5)
    close(jax.tree.map(lambda x: x[member], got.params), replayed.params)
    for name, value in segments[-1].values.items():
        assert float(gradx.hyperparams(replayed.opt_state)[name]) == np.float32(value)


def test_a_schedule_free_replay_continues_from_y_and_returns_x():
    # fit returns x (the average) as params and y as train_params; the next segment of a
    # replay must start from y, as the member's copy did
    params, data = problem()
    opt = gradx.schedule_free_sgd(1e-2)
    space = {"learning_rate": loguniform(1e-3, 3e-2)}
    got = gradx.search(loss_fn, params, opt, data, space, method="pbt", num_samples=4,
                       epochs=4, ready=1, metric="val_loss", **RUN)  # fmt: skip
    member = max(range(4), key=lambda m: len(got.schedule(m)))
    segments = got.schedule(member)
    assert len(segments) >= 2
    replayed = got.replay(member, loss_fn, params, opt, data, batch_size=8, key=RUN["key"],
                          eval_fn=eval_fn)  # fmt: skip
    want = np.concatenate([got.history["val_loss"][s.member, s.start : s.stop] for s in segments])
    np.testing.assert_allclose(replayed.history["val_loss"], want, rtol=1e-5)
    y = jax.tree.map(lambda x: x[member], got.params)
    close(replayed.train_params, y)
    close(replayed.params, gradx.schedule_free_eval_params(replayed.opt_state, y))


# ----------------------------------------------------------------------------- mesh

WORKER = """
import conftest, jax, numpy as np
import gradx, test_search as t
assert jax.device_count() == 8
params, data = t.problem()
mesh = jax.make_mesh((8,), ("d",))
# 5 members padded to 8, then 2 (halving) padded to 8: one program on the mesh.
for method, extra in (("halving", {"eta": 2}), ("pbt", {"ready": 1})):
    kw = dict(method=method, num_samples=5, epochs=2, metric="val_loss", **extra, **t.RUN)
    one = gradx.search(t.loss_fn, params, gradx.adam(1e-3), data, t.SPACE, **kw)
    many = gradx.search(t.loss_fn, params, gradx.adam(1e-3), data, t.SPACE, mesh=mesh, **kw)
    np.testing.assert_allclose(many.history["loss"], one.history["loss"], rtol=1e-5)
    t.close(many.params, one.params)
    assert many.lineage == one.lineage and many.population.tolist() == one.population.tolist()
    assert many.params["w"].sharding.mesh == mesh, method
print("ok")
"""


def test_population_sharded_over_eight_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    here = pathlib.Path(__file__).parent
    env["PYTHONPATH"] = os.pathsep.join([str(here), env.get("PYTHONPATH", "")])
    run = subprocess.run(
        [sys.executable, "-c", WORKER],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-4000:]


def test_integer_and_choice_hyperparameters():
    params, data = problem()
    opt = gradx.lookahead(gradx.sgd(0.05), sync_period=2, alpha=0.5)
    space = {"sync_period": randint(1, 5), "alpha": choice([0.25, 0.5, 1.0])}
    got = gradx.search(loss_fn, params, opt, data, space, method="pbt", num_samples=4, epochs=3,
                       ready=1, metric="val_loss", resample_probability=0.0, **RUN)  # fmt: skip
    assert got.samples["sync_period"].dtype == np.int32
    np.testing.assert_array_equal(
        got.opt_state.hyperparams["sync_period"], got.trajectory["sync_period"][:, -1]
    )
    assert set(np.unique(got.trajectory["sync_period"])) <= {1.0, 2.0, 3.0, 4.0}
    assert set(np.unique(got.trajectory["alpha"])) <= {0.25, 0.5, 1.0}
    for c in got.lineage:  # a choice moves to a neighbouring value of its list
        before = got.trajectory["alpha"][c.source, c.epoch - 1]
        steps = abs([0.25, 0.5, 1.0].index(c.values["alpha"]) - [0.25, 0.5, 1.0].index(before))
        assert steps <= 1
    with pytest.raises(
        ValueError, match=r"search: space\['sync_period'\] must be an integer >= 1, got 1\.5"
    ):
        gradx.search(loss_fn, params, opt, data, {"sync_period": choice([1.5, 2])},
                     num_samples=8, epochs=1, **RUN)  # fmt: skip


def test_halving_and_best_maximise_an_accuracy_by_default():
    params, data = problem()

    def accuracy_fn(params, batch):  # accuracy-like: higher is better
        return {
            "val_acc": 1.0 / (1.0 + loss_fn(params, batch)),
            "val_score": loss_fn(params, batch),
        }

    kw = dict(num_samples=9, epochs=2, **dict(RUN, eval_fn=accuracy_fn))
    space = {"learning_rate": loguniform(1e-4, 1e-1)}
    got = gradx.search(loss_fn, params, gradx.adam(1e-3), data, space, method="halving",
                       metric="val_acc", **kw)  # fmt: skip
    first = got.rungs[0]
    assert len(set(first.scores.tolist())) == 9  # the ranking has teeth
    best3 = np.sort(first.members[np.argsort(-first.scores, kind="stable")[:3]])
    np.testing.assert_array_equal(first.kept, best3)  # the highest accuracies survive
    alive = got.epochs_trained == 2
    want = int(np.flatnonzero(alive)[np.argmax(got.history["val_acc"][alive, -1])])
    assert got.best("val_acc").index == want
    assert got.best("val_acc", mode="min").index != want  # an explicit mode wins
    with pytest.raises(ValueError, match=r"search: metric must have a name .*got 'val_score'"):
        gradx.search(loss_fn, params, gradx.adam(1e-3), data, space, method="pbt",
                     metric="val_score", **kw)  # fmt: skip
    with pytest.raises(ValueError, match=r"SearchResult.best: metric must have a name"):
        got.best("val_score")


def test_search_names_its_arguments_in_its_errors():
    params, data = problem()
    with pytest.raises(
        ValueError,
        match=r"search: space\['learning_rate'\] must be >= 0, got -0.1 \(the sampled value of "
        r"member 0\)",
    ):
        gradx.search(loss_fn, params, gradx.adam(1e-3), data, {"learning_rate": -0.1},
                     num_samples=2, epochs=1, **RUN)  # fmt: skip
    with pytest.raises(
        TypeError, match=r"search: optimizer must be an optax GradientTransformation .*'adam'"
    ):
        gradx.search(loss_fn, params, "adam", data, SPACE, num_samples=2, epochs=1, **RUN)


@pytest.mark.parametrize("fn", ["sweep", "search"])
def test_sweep_and_search_check_what_fit_checks(fn):
    params, data = problem()

    def run(loss=loss_fn, data=data, **kwargs):
        kwargs = {**RUN, **kwargs}
        if fn == "sweep":
            grid = {"learning_rate": [0.01, 0.02]}
            return gradx.sweep(loss, params, gradx.adam(1e-3), data, grid, epochs=1, **kwargs)
        return gradx.search(loss, params, gradx.adam(1e-3), data, SPACE, num_samples=2,
                            epochs=1, **kwargs)  # fmt: skip

    with pytest.raises(TypeError, match=rf"^{fn}: loss_fn must be callable, got str 'mse'"):
        run(loss="mse")
    with pytest.raises(TypeError, match=rf"^{fn}: eval_data must be a pytree of numeric arrays"):
        run(eval_data={"names": np.array(["a", "b"])})
    with pytest.raises(TypeError, match=rf"^{fn}: data must be a pytree of arrays in memory .*"
                       r"got a generator: a stream of batches .* gradx\.fit only"):  # fmt: skip
        run(data=(b for b in [data]))
    with pytest.raises(ValueError, match=rf"^{fn}: loss_fn must return a scalar, got a tuple of "
                       r"2; it returns \(loss, aux\): return the loss alone"):  # fmt: skip
        run(loss=lambda p, b: (loss_fn(p, b), {}))
    # a state fit refuses (here: float16 second moments, as gradx stored them before it kept
    # them in float32, where Adam's v stays 0) is refused here too, not trained on silently
    half = jax.tree.map(lambda p: p.astype(jnp.float16), params)
    old = gradx.adam(1e-3, nu_dtype=jnp.float16).init(half)
    with pytest.raises(ValueError, match=rf"^{fn}: opt_state does not have the structure, .*"
                       r"nu\['b'\]: shape \(\) dtype float16 vs shape \(\) dtype float32"):  # fmt: skip
        gradx.sweep(loss_fn, half, gradx.adam(1e-3), data, {"learning_rate": [0.01]},
                    epochs=1, opt_state=old, **RUN) if fn == "sweep" else gradx.search(
            loss_fn, half, gradx.adam(1e-3), data, SPACE, num_samples=2, epochs=1,
            opt_state=old, **RUN)  # fmt: skip


def test_a_sweeps_history_is_float64_as_fits():
    params, data = problem()

    def metrics(p, batch):
        return {"val_loss": loss_fn(p, batch), "small": loss_fn(p, batch) < 1.0}

    run = dict(RUN, eval_fn=metrics)
    swept = gradx.sweep(loss_fn, params, gradx.adam(1e-3), data, {"learning_rate": [0.01]},
                        epochs=2, **run)  # fmt: skip
    fitted = gradx.fit(loss_fn, params, gradx.adam(0.01), data, epochs=2, **run)
    for name, values in fitted.history.items():
        assert values.dtype == swept.point(0).history[name].dtype == np.float64, name
        np.testing.assert_allclose(swept.point(0).history[name], values, rtol=1e-6)
