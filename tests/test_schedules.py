"""gradx.schedules: schedules whose numbers live in the optimizer's state.

Each schedule is checked live against the optax schedule of the same name at every step of a
range covering its boundaries (float32 without x64, float64 with it), and through an
optimizer against optax's; its numbers are set, swept and searched without retracing.
"""

import inspect
import pickle

import jax
import jax.numpy as jnp
import live_twin
import numpy as np
import optax
import pytest
from live_twin import F32, assert_same_trajectory

import gradx

S = gradx.schedules
STEPS = 130

# (name, args): each range of boundaries (begin, end of warmup and decay, thresholds) falls
# inside [0, STEPS).
CASES = [
    ("constant_schedule", (0.3,)),
    ("linear_schedule", (1.0, 0.01, 100)),
    ("linear_schedule", (0.1, 0.7, 37, 5)),
    ("linear_schedule", (0.1, 0.7, 0, 5)),  # no transition: constant
    ("cosine_decay_schedule", (0.1, 77)),
    ("cosine_decay_schedule", (0.3, 50, 0.1, 1.5)),
    ("warmup_constant_schedule", (0.0, 0.1, 13)),
    ("warmup_cosine_decay_schedule", (0.0, 1e-3, 10, 100)),
    ("warmup_cosine_decay_schedule", (1e-4, 3e-3, 7, 91, 1e-5, 1.3)),
    ("warmup_cosine_decay_schedule", (1e-4, 3e-3, 0, 91, 1e-5)),  # no warmup
    ("warmup_cosine_decay_schedule", (1e-4, 0.0, 5, 91, 1e-5)),  # zero peak: α = 0
    ("exponential_decay", (0.1, 10, 0.5)),
    ("exponential_decay", (0.1, 7, 0.9, 5, True, 0.02)),
    ("exponential_decay", (0.1, 7, 1.1, 5, False, 0.3)),  # growing, clipped above
    ("exponential_decay", (0.1, 0, 0.9)),  # no transition: constant
    ("piecewise_constant_schedule", (0.1, {30: 0.1, 10: 0.5, 60: 3.0})),
    ("piecewise_constant_schedule", (0.1,)),
]


def _join(lib):
    return lib.join_schedules(
        [
            lib.linear_schedule(0.0, 0.1, 10),
            lib.cosine_decay_schedule(0.1, 50, 0.1),
            lib.piecewise_constant_schedule(0.02, {5: 0.5}),
        ],
        [10, 60],
    )


def _values(schedule, steps):
    with jax.numpy_dtype_promotion("standard"):  # optax's schedules mix Python numbers
        return np.broadcast_to(np.asarray(schedule(steps)), steps.shape)


def _all_values(ours, theirs, steps_ours, steps_theirs):
    """Every schedule's values, ours at ``steps_ours`` and optax's at ``steps_theirs``, in one
    jitted program (not op by op: that takes seconds)."""

    def run(a, b):
        return [f(a) for f in ours], [f(b) for f in theirs]

    with jax.numpy_dtype_promotion("standard"):
        out = jax.jit(run)(steps_ours, steps_theirs)
    shape = steps_ours.shape
    return [[np.broadcast_to(np.asarray(v), shape) for v in part] for part in out]


def _trajectory(opt, dtype, steps):
    """live_twin's trajectory (its params and gradients), in one jitted scan."""
    grads = jax.tree.map(lambda *g: jnp.stack(g), *live_twin.grads(dtype, steps))

    def step(carry, g):
        p, state = carry
        u, state = opt.update(g, state, p)
        p = optax.apply_updates(p, u)
        return (p, state), p

    with jax.numpy_dtype_promotion("standard"):
        p = live_twin.params(dtype)
        (_, state), ps = jax.jit(lambda p: jax.lax.scan(step, (p, opt.init(p)), grads))(p)
    return [jax.tree.map(lambda x, k=k: x[k], ps) for k in range(steps)], state


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
def test_every_schedule_equals_optax_at_every_step(dtype):
    x64 = dtype == jnp.float64
    with jax.enable_x64(x64):
        ours = jnp.arange(STEPS, dtype=jnp.int32)  # the state's count
        # optax computes in float64 only for int64 counts (int32 / int is float32 in JAX)
        theirs = jnp.arange(STEPS, dtype=jnp.int64 if x64 else jnp.int32)
        cases = [(f"{n}{a}", getattr(S, n)(*a), getattr(optax.schedules, n)(*a)) for n, a in CASES]
        cases.append(("join", _join(S), _join(optax.schedules)))
        got_all, want_all = _all_values(
            [gx for _, gx, _ in cases], [ox for _, _, ox in cases], ours, theirs
        )
        for (label, gx, _), got, want in zip(cases, got_all, want_all, strict=True):
            assert isinstance(gx, S.ArraySchedule), label
            assert got.dtype == dtype, label
            if x64:  # the same operations in the same order: bit for bit
                np.testing.assert_array_equal(got, want, err_msg=label)
            else:  # optax folds Python numbers (I − E, E/peak) in float64 first: ≤ 10 ulps
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12, err_msg=label)


def test_same_signatures_as_optax_and_every_optax_name_importable():
    for name in optax.schedules.__all__ if hasattr(optax.schedules, "__all__") else ():
        assert hasattr(S, name), name
    for name in dir(optax.schedules):
        if not name.startswith("_"):
            assert hasattr(S, name), name
    for name, _ in [*CASES, ("join_schedules", ())]:
        ours = inspect.signature(getattr(S, name)).parameters
        theirs = inspect.signature(getattr(optax.schedules, name)).parameters
        assert list(ours) == list(theirs), name
        for p in ours:
            assert ours[p].default == theirs[p].default, (name, p)
            assert ours[p].kind == theirs[p].kind, (name, p)
    # a plain callable in join_schedules: optax's join, a closure
    mixed = S.join_schedules([S.constant_schedule(1.0), optax.constant_schedule(2.0)], [3])
    assert not isinstance(mixed, S.ArraySchedule) and float(mixed(5)) == 2.0
    # a gradx schedule works where optax takes a schedule
    with jax.enable_x64(False):
        want = _trajectory(optax.sgd(optax.cosine_decay_schedule(0.1, 5)), jnp.float32, 8)[0]
        got = _trajectory(optax.sgd(S.cosine_decay_schedule(0.1, 5)), jnp.float32, 8)[0]
    assert_same_trajectory(got, want, F32)


def test_an_optimizer_with_a_gradx_schedule_equals_optax_with_optax_s():
    args = (1e-3, 0.05, 6, 40, 1e-3)
    with jax.enable_x64(False):
        ours, _ = _trajectory(gradx.sgd(S.warmup_cosine_decay_schedule(*args)), jnp.float32, 45)
        theirs, _ = _trajectory(
            optax.sgd(optax.warmup_cosine_decay_schedule(*args)), jnp.float32, 45
        )
        assert_same_trajectory(ours, theirs, F32)
    # float64: the numbers are float64 and the rate at step 44 is optax's float64 value
    # (optax evaluates its own schedule at an int32 count: a float32 rate, even with x64)
    _, state = _trajectory(gradx.sgd(S.warmup_cosine_decay_schedule(*args)), jnp.float64, 45)
    values = gradx.hyperparams(state)
    assert values["learning_rate/peak_value"].dtype == jnp.float64
    assert values["learning_rate/warmup_steps"].dtype == jnp.int32
    want = _values(optax.warmup_cosine_decay_schedule(*args), jnp.int64(44))
    np.testing.assert_array_equal(values["learning_rate"], want)


def _quadratic(p):
    return jnp.sum((p["w"] - 0.5) ** 2)


def test_numbers_are_hyperparameters_set_without_retracing_and_checked():
    opt = gradx.adam(S.warmup_cosine_decay_schedule(0.0, 1e-2, 5, 40))
    p = {"w": jnp.ones(3)}
    traces = []

    @jax.jit
    def step(p, state):
        traces.append(1)
        u, state = opt.update(jax.grad(_quadratic)(p), state, p)
        return optax.apply_updates(p, u), state

    state = opt.init(p)
    values = gradx.hyperparams(state)
    assert {k for k in values if k.startswith("learning_rate/")} == {
        f"learning_rate/{k}"
        for k in (
            "init_value",
            "peak_value",
            "warmup_steps",
            "decay_steps",
            "end_value",
            "exponent",
        )
    }
    assert float(values["learning_rate"]) == 0.0  # the value at step 0
    changes = {"learning_rate/peak_value": 0.5, "learning_rate/warmup_steps": 2}
    state = gradx.set_hyperparams(state, **changes)
    for _ in range(7):
        p, state = step(p, state)
    assert len(traces) == 1
    fresh = S.warmup_cosine_decay_schedule(0.0, 0.5, 2, 40)
    np.testing.assert_allclose(gradx.hyperparams(state)["learning_rate"], fresh(6), rtol=1e-6)
    # the same seven steps by an optimizer built with the new schedule: the same program
    other = gradx.adam(fresh)
    assert other.update is opt.update  # so `step` runs it too
    q, s2 = {"w": jnp.ones(3)}, other.init({"w": jnp.ones(3)})
    for _ in range(7):
        q, s2 = step(q, s2)
    assert len(traces) == 1
    np.testing.assert_array_equal(q["w"], p["w"])
    # rules and relations, by their full names
    for bad, match in [
        ({"learning_rate/warmup_steps": 1.5}, r"learning_rate/warmup_steps must be an integer >= 0"),
        ({"learning_rate/warmup_steps": 40}, r"learning_rate/warmup_steps must be < learning_rate/decay_steps \(40\), got 40"),
        ({"learning_rate/peak_value": -1.0}, r"learning_rate/peak_value must be >= 0"),
        ({"learning_rate/decay_steps": 0}, r"learning_rate/decay_steps must be an integer > 0"),
        ({"learning_rate/exponent": 0.0}, r"learning_rate/exponent must be > 0"),
        ({"learning_rate": 0.1}, r"'learning_rate' follows a gradx schedule, .* set its numbers instead: 'learning_rate/decay_steps'"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            gradx.set_hyperparams(state, **bad)
    # a traced value is checked at run time
    from jax.experimental import checkify

    with gradx.check_hyperparams():
        checked = checkify.checkify(
            lambda s, w: opt.update({"w": jnp.ones(3)}, gradx.set_hyperparams(s, **{"learning_rate/warmup_steps": w}), p)
        )  # fmt: skip
        err, _ = jax.jit(checked)(state, jnp.int32(45))
    with pytest.raises(checkify.JaxRuntimeError, match=r"learning_rate/warmup_steps must be < learning_rate/decay_steps"):  # fmt: skip
        err.throw()


def test_construction_checks_each_number_by_its_rule():
    with pytest.raises(ValueError, match=r"adam: learning_rate/init_value must be >= 0, got -1.0"):
        gradx.adam(S.linear_schedule(-1.0, 0.0, 10))
    with pytest.raises(ValueError, match=r"adam: b1/end_value must be in \[0, 1\), got 1.0"):
        gradx.adam(0.1, b1=S.linear_schedule(0.5, 1.0, 10))
    for build, match in [
        (lambda: S.cosine_decay_schedule(1.0, 0), r"cosine_decay_schedule: decay_steps must be an integer > 0, got 0"),
        (lambda: S.linear_schedule(1.0, 0.0, 10, -1), r"linear_schedule: transition_begin must be an integer >= 0"),
        (lambda: S.warmup_cosine_decay_schedule(0.0, 1.0, 10, 10), r"warmup_steps must be < decay_steps \(10\), got 10"),
        (lambda: S.piecewise_constant_schedule(1.0, {5: -0.5}), r"scales/0 must be >= 0"),
        (lambda: S.exponential_decay(1.0, 10, 0.0), r"exponential_decay: decay_rate must be > 0"),
        (lambda: S.join_schedules([S.constant_schedule(1.0)], [3]), r"one step fewer than schedules"),
        (lambda: S.constant_schedule(np.ones(2)), r"value must be a scalar"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            build()
    with pytest.raises(TypeError, match=r"staircase must be a bool"):
        S.exponential_decay(1.0, 10, 0.5, staircase=1)


def _problem():
    x = jax.random.normal(jax.random.key(0), (48, 3))
    return (x, x @ jnp.array([1.0, -2.0, 0.5])), {"w": jnp.zeros(3), "b": jnp.zeros(())}


def test_sweep_over_peak_and_warmup_is_one_program_and_each_point_equals_its_fit():
    data, params = _problem()
    traces = []

    def loss_fn(p, batch):
        traces.append(1)
        xb, yb = batch
        return jnp.mean((xb @ p["w"] + p["b"] - yb) ** 2)

    def schedule(peak, warmup):
        return S.warmup_cosine_decay_schedule(0.0, peak, warmup, 30)

    grid = {
        "learning_rate/peak_value": np.array([1e-2, 5e-2]),
        "learning_rate/warmup_steps": np.array([2, 8]),
    }
    common = dict(batch_size=16, epochs=2, key=jax.random.key(1), progress=False)
    swept = gradx.sweep(loss_fn, params, gradx.sgd(schedule(1e-2, 4)), data, grid, **common)
    assert len(traces) == 1  # four points, one program
    before = len(traces)
    for k in range(4):
        peak = float(swept.grid["learning_rate/peak_value"][k])
        warmup = int(swept.grid["learning_rate/warmup_steps"][k])
        alone = gradx.fit(loss_fn, params, gradx.sgd(schedule(peak, warmup)), data, **common)
        for a, b in zip(jax.tree.leaves(swept.params), jax.tree.leaves(alone.params), strict=True):
            np.testing.assert_allclose(a[k], b, rtol=1e-5, atol=1e-7)
    assert len(traces) == before + 1  # four fits of freshly built schedules: one compile
    found = gradx.search(
        loss_fn, params, gradx.sgd(schedule(1e-2, 4)), data,
        {"learning_rate/peak_value": gradx.search_space.loguniform(1e-3, 1e-1),
         "learning_rate/warmup_steps": gradx.search_space.randint(0, 10)},
        num_samples=4, **common,
    )  # fmt: skip
    assert len(traces) <= before + 2
    steps = gradx.hyperparams(found.opt_state)["learning_rate/warmup_steps"]
    assert steps.dtype == jnp.int32 and np.all((steps >= 0) & (steps < 10))


def test_pickle_orbax_and_effective_learning_rate_with_a_gradx_schedule(tmp_path):
    import orbax.checkpoint as ocp

    def joined(lib):
        pieces = [lib.linear_schedule(0.0, 0.1, 2), lib.piecewise_constant_schedule(0.1, {1: 0.5})]
        return lib.join_schedules(pieces, [2])

    def run(opt, steps=4):  # jitted: op by op, the first run compiles each op (seconds)
        def go(p, g):
            state = opt.init(p)
            for k in range(steps):
                _, state = opt.update(jax.tree.map(lambda x, k=k: x * 0.1 * k, g), state, p)
            return state, gradx.effective_learning_rate(opt, state, p, g)["w"]

        with jax.numpy_dtype_promotion("standard"):  # optax's schedule mixes Python numbers
            return jax.jit(go)(p, g)

    p, g = {"w": jnp.ones(3)}, {"w": jnp.ones(3)}
    opt = gradx.momentum(joined(S), 0.5)
    state, alpha = run(opt)
    _, want = run(gradx.momentum(joined(optax.schedules), 0.5))
    assert float(gradx.hyperparams(state)["learning_rate"]) == pytest.approx(0.05)
    np.testing.assert_allclose(alpha, want, rtol=1e-6)
    back = pickle.loads(pickle.dumps(state))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "state", state)
    with ocp.StandardCheckpointer() as checkpointer:
        raw = checkpointer.restore(tmp_path / "state")  # no target: dicts
    restored = jax.tree.unflatten(jax.tree.structure(state), jax.tree.leaves(raw))
    update = jax.jit(opt.update)
    want = update(g, state, p)
    for s in (back, restored):
        jax.tree.map(np.testing.assert_array_equal, s, state)
        jax.tree.map(np.testing.assert_array_equal, update(g, s, p), want)
