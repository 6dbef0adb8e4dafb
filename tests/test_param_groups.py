"""gradx.param_groups and gradx.compat.torch's param groups.

Checked against: optax.partition of the separately built optimizers, run live (float64,
1e-12); the golden torch 2.13 trajectories of tests/golden/torch_groups.json (two param
groups with different options, recorded by tests/golden/record.py); and each group's own
optimizer alone on its leaves (effective learning rate).
"""

import json
import pathlib
import pickle
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from live_twin import F64, assert_same_trajectory, grads, params, trajectory
from test_compat import replay

import gradx
from gradx import search_space

TORCH = gradx.compat.torch
GOLDEN = json.loads((pathlib.Path(__file__).parent / "golden" / "torch_groups.json").read_text())
# live_twin's params: "m" (3, 4), "v" (5,), "s" (): three groups below, "s" left to default
LABELS = {"m": "embed", "v": "no_decay", "s": "default"}


def _both(make, overrides):
    """param_groups of make(...) with per-group overrides, and optax.partition of the same
    optimizers built apart."""
    ours = gradx.param_groups(
        make(),
        no_decay=(r"^v$", overrides["no_decay"]),
        embed=(r"m", overrides["embed"]),  # re.search: a part of the key path
    )
    apart = {name: make(**o) for name, o in overrides.items()} | {"default": make()}
    return ours, optax.partition(apart, LABELS)


def _jitted(opt):
    return optax.GradientTransformationExtraArgs(opt.init, jax.jit(opt.update))


def test_param_groups_equal_optax_partition_of_the_optimizers_built_apart():
    cases = {
        "adamw": (
            lambda **o: gradx.adamw(**{"learning_rate": 1e-2, "weight_decay": 0.1, **o}),
            {"no_decay": {"weight_decay": 0.0}, "embed": {"learning_rate": 3e-3, "b1": 0.8}},
        ),
        "adam": (
            lambda **o: gradx.adam(**{"learning_rate": 1e-2, **o}),
            {"no_decay": {"eps": 1e-3}, "embed": {"learning_rate": 3e-2, "b2": 0.99}},
        ),
        "sgd momentum": (  # a flag differs per group too
            lambda **o: gradx.sgd(**{"learning_rate": 0.05, "momentum": 0.9, **o}),
            {"no_decay": {"nesterov": True}, "embed": {"momentum": None, "learning_rate": 0.1}},
        ),
    }
    for name, (make, overrides) in cases.items():
        ours, theirs = _both(make, overrides)
        got, state = trajectory(_jitted(ours), jnp.float64, steps=40)
        want, their_state = trajectory(_jitted(theirs), jnp.float64, steps=40)
        assert_same_trajectory(got, want, F64)
        assert set(state.groups) == {"embed", "no_decay", "default"}, name
        for group, s in state.groups.items():  # each group keeps its own state, as optax's
            inner = their_state.inner_states[group].inner_state
            for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(inner), strict=True):
                np.testing.assert_allclose(a, b, **F64, err_msg=f"{name} {group}")
    assert gradx.hyperparams(state)["embed/learning_rate"] == 0.1
    assert "embed/momentum" not in gradx.hyperparams(state)  # momentum=None: off in embed


def test_one_groups_values_are_set_apart_without_retracing():
    opt = gradx.param_groups(
        gradx.adamw(1e-2, weight_decay=0.1),
        no_decay=(r"^v$", {"weight_decay": 0.0}),
        embed=(r"^m$", {"learning_rate": optax.linear_schedule(1e-2, 1e-3, 10)}),
    )
    p = params(jnp.float32)
    state = opt.init(p)
    keys = {f"{g}/{n}" for g in ("no_decay", "embed", "default")
            for n in ("learning_rate", "b1", "b2", "eps", "weight_decay")}  # fmt: skip
    assert set(gradx.hyperparams(state)) == keys
    traces = []

    @jax.jit
    def step(g, state, p):
        traces.append(1)
        return opt.update(g, state, p)

    g = grads(jnp.float32, steps=1)[0]
    u1, s1 = step(g, state, p)
    u2, s2 = step(g, gradx.set_hyperparams(state, **{"default/learning_rate": 5e-2}), p)
    assert len(traces) == 1
    assert np.all(np.asarray(u2["s"]) != np.asarray(u1["s"]))  # the default group's leaf
    for leaf in ("m", "v"):  # the other groups' leaves: untouched, bit for bit
        np.testing.assert_array_equal(u2[leaf], u1[leaf])
    assert float(gradx.hyperparams(s2)["no_decay/learning_rate"]) == pytest.approx(1e-2)
    # a schedule as a group's value: its last value is read, and it cannot be set by hand
    for _ in range(4):
        _, s1 = step(g, s1, p)
    assert len(traces) == 1
    assert float(gradx.hyperparams(s1)["embed/learning_rate"]) == pytest.approx(1e-2 - 4 * 9e-4)
    with pytest.raises(ValueError, match=r"'embed/learning_rate' follows a schedule"):
        gradx.set_hyperparams(s1, **{"embed/learning_rate": 1e-3})
    with pytest.raises(ValueError, match=r"no_decay/weight_decay must be >= 0, got -1"):
        gradx.set_hyperparams(s1, **{"no_decay/weight_decay": -1.0})
    # α_ef per leaf: each group's own optimizer's, alone on its leaves
    alpha = gradx.effective_learning_rate(opt, s1, p)
    for leaf, make in (
        ("m", lambda: gradx.adamw(optax.linear_schedule(1e-2, 1e-3, 10), weight_decay=0.1)),
        ("v", lambda: gradx.adamw(1e-2, weight_decay=0.0)),
        ("s", lambda: gradx.adamw(1e-2, weight_decay=0.1)),
    ):
        alone, q = make(), {leaf: p[leaf]}
        s = alone.init(q)
        for _ in range(5):
            _, s = jax.jit(alone.update)({leaf: g[leaf]}, s, q)
        want = gradx.effective_learning_rate(alone, s, q)[leaf]
        np.testing.assert_allclose(alpha[leaf], want, rtol=1e-6, err_msg=leaf)
    # the state pickles, and the restored state steps as the original
    back = pickle.loads(pickle.dumps(s1))
    np.testing.assert_array_equal(step(g, back, p)[0]["m"], step(g, s1, p)[0]["m"])


def test_a_groups_fitted_lookahead_alpha_is_reported_as_the_lookahead_built_apart_reports_it():
    # lookahead(alpha="quadratic") reports the α of the last sync in its hyperparameters; each
    # named group, rebuilt from the constructor, must report its own, not the initial 1.
    scale = {"w": jnp.array([1.0, 10.0]), "b": jnp.array([3.0])}
    p0 = {"w": jnp.array([1.0, 1.0]), "b": jnp.array([1.0])}

    def loss_fn(q):
        return sum(jnp.sum(scale[k] * q[k] ** 2) for k in q)

    builds = {
        "lookahead quadratic": lambda **o: gradx.lookahead(
            gradx.sgd(0.01), sync_period=3, alpha="quadratic", **o
        ),
        "lookahead_fitted": lambda **o: gradx.lookahead_fitted(0.01, **o),
    }
    for name, make in builds.items():
        ours = gradx.param_groups(make(), bb=(r"^b$", {}))
        apart = optax.partition({"bb": make(), "default": make()}, {"w": "default", "b": "bb"})
        states = []
        for opt in (ours, apart):
            state, q = opt.init(p0), p0
            for _ in range(6):  # past the first sync (call 4 or 6)
                loss, g = jax.value_and_grad(loss_fn)(q)
                u, state = opt.update(g, state, q, value=loss)
                q = optax.apply_updates(q, u)
            states.append(state)
        got, theirs = states
        hp = gradx.hyperparams(got)
        for group in ("bb", "default"):
            fitted = got.groups[group].inner_state.alpha
            assert float(fitted) != 1.0, (name, group)  # a sync happened and fitted another α
            assert float(hp[f"{group}/alpha"]) == float(fitted), (name, group)
            want = gradx.hyperparams(theirs.inner_states[group].inner_state)["alpha"]
            np.testing.assert_allclose(hp[f"{group}/alpha"], want, rtol=1e-6, err_msg=name)


def test_errors_name_the_group_and_the_rule():
    p = params(jnp.float32)
    adamw = gradx.adamw(1e-3)
    cases = [
        (ValueError, r"param_groups: group 'nd': adamw: weight_decay must be >= 0, got -1\.0",
         lambda: gradx.param_groups(adamw, nd=("v", {"weight_decay": -1.0}))),
        (ValueError, r"group 'nd' sets \['lr'\], which adamw does not take; its arguments are "
                     r"\['learning_rate'", lambda: gradx.param_groups(adamw, nd=("v", {"lr": 1}))),
        (ValueError, r"the group name 'default' is reserved",
         lambda: gradx.param_groups(adamw, default=("v", {}))),
        (ValueError, r"group 'nd''s pattern '\(' is not a regular expression",
         lambda: gradx.param_groups(adamw, nd=("(", {}))),
        (TypeError, r"group 'nd' must be \(pattern, \{argument: value, \.\.\.\}\) or a pattern",
         lambda: gradx.param_groups(adamw, nd={"weight_decay": 0.0})),
        (TypeError, r"optimizer must be built by a @gradx.optimizer constructor .* got a "
                    r"GradientTransformationExtraArgs that none built; for a chain",
         lambda: gradx.param_groups(optax.adamw(1e-3), nd="v")),
        (TypeError, r"optimizer must be built by a @gradx.optimizer constructor",
         lambda: gradx.param_groups(gradx.flat(adamw), nd="v")),
        (ValueError, r"param_groups: group 'x' takes no params leaf: its pattern 'zz' matches "
                     r"none .* the key paths are 'm', 's', 'v'",
         lambda: gradx.param_groups(adamw, x="zz").init(p)),
        (ValueError, r"group 'later' takes no params leaf",  # every leaf taken before it
         lambda: gradx.param_groups(adamw, first=".", later="m").init(p)),
        (ValueError, r"param_groups: cannot run inside gradx.flat",
         lambda: gradx.flat(gradx.param_groups(adamw, nd="v")).init(p)),
        (TypeError, r"AdamW: a param group's 'params' must be a regular expression",
         lambda: TORCH.AdamW([{"params": [p["m"]]}, {"params": ".*"}])),
        (ValueError, r"AdamW: param group 1 \('group1'\): weight_decay must be >= 0, got -0\.1",
         lambda: TORCH.AdamW([{"params": "m"}, {"params": ".*", "weight_decay": -0.1}])),
        (ValueError, r"AdamW: every params leaf must be in a group, but no group's pattern "
                     r"matches 's', 'v'; add a last group",
         lambda: TORCH.AdamW([{"params": "m"}]).init(p)),
    ]  # fmt: skip
    for error, message, call in cases:
        with pytest.raises(error, match=message):
            call()
    opt = gradx.param_groups(adamw, nd="v")
    state = opt.init(p)
    with pytest.raises(gradx.TreeMismatchError, match=r"fall in the groups \['default'\]"):
        opt.update({"m": p["m"]}, state)


def test_fit_sweep_and_search_tune_one_groups_value():
    x = jnp.linspace(-1.0, 1.0, 16)[:, None]
    data = (x, 3.0 * x + 1.0)

    def loss_fn(q, batch):
        xb, yb = batch
        return gradx.losses.mse(xb @ q["embed"] + q["bias"], yb)

    p0 = {"embed": jnp.zeros((1, 1)), "bias": jnp.zeros((1, 1))}
    opt = gradx.param_groups(gradx.sgd(0.1, momentum=0.5), embed=("embed", {"learning_rate": 0.2}))
    run = dict(batch_size=8, epochs=3, key=jax.random.key(0), progress=False)
    fitted = gradx.fit(loss_fn, p0, opt, data, **run)  # leaf by leaf: not packed
    assert fitted.history["loss"][-1] < 0.5 * fitted.history["loss"][0]
    swept = gradx.sweep(loss_fn, p0, opt, data, {"embed/learning_rate": jnp.array([0.0, 0.2])},
                        **run)  # fmt: skip
    np.testing.assert_array_equal(swept.params["embed"][0], p0["embed"])  # lr 0: not moved
    np.testing.assert_allclose(swept.params["embed"][1], fitted.params["embed"], rtol=1e-5)
    hp = gradx.hyperparams(swept.opt_state)
    np.testing.assert_allclose(hp["embed/learning_rate"], [0.0, 0.2])
    np.testing.assert_allclose(hp["default/learning_rate"], [0.1, 0.1])
    found = gradx.search(loss_fn, p0, opt, data, {"embed/learning_rate": search_space.uniform(
        0.01, 0.3)}, num_samples=2, **run)  # fmt: skip
    values = found.samples["embed/learning_rate"]
    assert np.all((values >= 0.01) & (values <= 0.3)) and len(set(values.tolist())) == 2


@pytest.mark.parametrize("record", GOLDEN["records"], ids=lambda r: f"{r['cls']}-{r['problem']}")
def test_torch_param_groups_reproduce_the_golden_torch_trajectory(record):
    groups = [
        {k: tuple(v) if isinstance(v, list) else v for k, v in g.items()} for g in record["groups"]
    ]
    opt = getattr(TORCH, record["cls"])(groups, **record["kwargs"])
    got, state = replay(opt, record["problem"])
    for name, want in record["trajectory"].items():
        np.testing.assert_allclose(got[name], np.asarray(want), rtol=1e-6, atol=1e-9)
    # torch's defaults rule: a group's missing options are the constructor's
    hp = gradx.hyperparams(state)
    assert {re.sub("/.*", "", k) for k in hp} == {"group0", "group1"}
    assert float(hp["group1/learning_rate"]) == record["groups"][1].get(
        "lr", record["kwargs"]["lr"]
    )
