"""Schedule-Free: gradx.schedule_free_adamw / schedule_free_sgd / schedule_free_eval_params
against optax.contrib live and the paper in NumPy, the gain rule, and fit at the average."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from jax.flatten_util import ravel_pytree
from live_twin import (
    F32,
    F64,
    STEPS,
    assert_same_trajectory,
    check_no_retrace,
    check_vmap_over_learning_rates,
    grads,
    params,
    trajectory,
)
from reference_schedule_free import schedule_free_sgd as reference_sgd

import gradx
from gradx._optimizers.schedule_free import ScheduleFreeState, warmup_value

# warmup, weight decay, a non-default weight_lr_power and b1
ADAMW = dict(learning_rate=0.05, warmup_steps=10, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.01,
             weight_lr_power=1.5)  # fmt: skip
SGD = dict(learning_rate=0.05, warmup_steps=10, b1=0.85, weight_decay=0.01, weight_lr_power=3.0)
TWINS = [
    (gradx.schedule_free_adamw, optax.contrib.schedule_free_adamw, ADAMW),
    (gradx.schedule_free_sgd, optax.contrib.schedule_free_sgd, SGD),
]


def _float64_warmup(kwargs):
    """optax's warmup schedule computes t/W in float32 (an int32 count over a Python int),
    also with float64 params; the same schedule on a float64 count, as gradx computes it,
    given to optax as a schedule (the path its warmup_steps takes) is optax in float64."""
    kw = dict(kwargs)
    ramp = optax.warmup_constant_schedule(0.0, kw.pop("learning_rate"), kw.pop("warmup_steps"))
    return {"learning_rate": lambda c: ramp(jnp.asarray(c, jnp.float64)), **kw}


def _run(opt, dtype, gs=None):
    """live_twin.trajectory with the update jitted (once per optimizer and dtype): the params
    after each step, and the last state."""
    update = jax.jit(opt.update)
    p = params(dtype)
    state, out = opt.init(p), []
    for g in grads(dtype) if gs is None else gs:
        u, state = update(jax.tree.map(lambda x: x.astype(dtype), g), state, p)
        p = optax.apply_updates(p, u)
        out.append(p)
    return out, state


def _err(a, b):
    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        for p, q in zip(a, b, strict=True)
        for x, y in zip(jax.tree.leaves(p), jax.tree.leaves(q), strict=True)
    )


def test_trajectories_and_eval_params_equal_optax_contrib_in_three_dtypes():
    # bf16-exact gradients for the bf16 runs and their float32 truth (the f32 programs again)
    bf16_grads = grads(jnp.bfloat16)
    for ours_fn, theirs_fn, kwargs in TWINS:
        for dtype in (jnp.float32, jnp.float64):
            with jax.numpy_dtype_promotion("standard"), jax.enable_x64(dtype == jnp.float64):
                ours, state = _run(ours_fn(**kwargs), dtype)
                # float64: optax's warmup computes in float32, 1e-8 off (see _float64_warmup)
                twin = theirs_fn(**(_float64_warmup(kwargs) if dtype == jnp.float64 else kwargs))
                theirs, their_state = _run(twin, dtype)
                x = gradx.schedule_free_eval_params(state, ours[-1])
                their_x = optax.contrib.schedule_free_eval_params(their_state, theirs[-1])
                if dtype == jnp.float32:
                    truth, _ = _run(twin, dtype, bf16_grads)
            assert len(ours) == STEPS >= 40
            tol = F64 if dtype == jnp.float64 else F32
            assert_same_trajectory(ours, theirs, tol)
            assert_same_trajectory([x, state.inner_state.z], [their_x, their_state.z], tol)
            hp = gradx.hyperparams(state)
            assert {k: float(hp[k]) for k in kwargs} == pytest.approx(kwargs, rel=1e-6)
        # bfloat16: optax keeps β, γ_max and Σw in bfloat16 and computes x and y there;
        # gradx computes in float32 and rounds y once: it stays nearer the float32 run.
        with jax.numpy_dtype_promotion("standard"):
            ours, state = _run(ours_fn(**kwargs), jnp.bfloat16, bf16_grads)
            theirs, their_state = _run(theirs_fn(**kwargs), jnp.bfloat16, bf16_grads)
            x = gradx.schedule_free_eval_params(state, ours[-1])
            their_x = optax.contrib.schedule_free_eval_params(their_state, theirs[-1])
        assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves((ours, state.inner_state.z)))
        assert _err(ours[:1], theirs[:1]) <= 2**-7  # step 1: one bf16 rounding apart
        assert _err(ours, theirs) < 0.1  # about 10 bf16 ulps at 1, after 50 roundings each
        assert _err(ours, truth) <= _err(theirs, truth)
        assert _err([x], [their_x]) < 0.2  # x = (y − (1−β)z)/β magnifies y's rounding by 1/β
        assert jax.tree.map(lambda a: a.dtype, x) == jax.tree.map(lambda a: a.dtype, ours[-1])
    # optax's own warmup, with float64 on, is float32: gradx's float64 one to its rounding
    counts = jnp.arange(12, dtype=jnp.int32)
    theirs = optax.warmup_constant_schedule(0, 0.05, 10)(counts)
    ours = warmup_value(jnp.float64(0.05), jnp.int32(10), counts)
    assert theirs.dtype == jnp.float32 and ours.dtype == jnp.float64
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    np.testing.assert_allclose(ours, 0.05 * np.minimum(np.arange(12) / 10, 1), rtol=1e-15)


def test_a_schedule_is_evaluated_as_optax_does():
    # the base steps with γ at the steps taken, the averaging weights with γ(t): as optax
    # (one helper builds both optimizers' learning rates: SGD's stands for both)
    schedule = optax.linear_schedule(0.01, 0.1, 20)
    with jax.numpy_dtype_promotion("standard"):
        ours, _ = trajectory(gradx.schedule_free_sgd(schedule, b1=0.8), jnp.float64, steps=12)
        theirs, _ = trajectory(
            optax.contrib.schedule_free_sgd(schedule, b1=0.8), jnp.float64, steps=12
        )
    assert_same_trajectory(ours, theirs, F64)


@pytest.mark.parametrize("warmup_steps", [None, 7])
def test_sgd_equals_the_paper_in_numpy(warmup_steps):
    hp = dict(learning_rate=0.05, b1=0.85, weight_decay=0.01, weight_lr_power=3.0)
    opt = gradx.schedule_free_sgd(**hp, warmup_steps=warmup_steps)
    p = params(jnp.float64)
    state, theta, ref_state = opt.init(p), ravel_pytree(p)[0], {}
    for t, g in enumerate(grads(jnp.float64), start=1):
        u, state = opt.update(g, state, p)
        p = optax.apply_updates(p, u)
        flat_g = np.asarray(ravel_pytree(g)[0])
        # gradx and optax step z with γ_{t−1} in the warmup, the paper with γ_t (see docs)
        theta, ref_state = reference_sgd(
            theta, ref_state, lambda _, fg=flat_g: fg, t, **hp, warmup_steps=warmup_steps,
            lagged=True,
        )  # fmt: skip
        np.testing.assert_allclose(ravel_pytree(p)[0], theta, rtol=1e-12, atol=1e-14)
    x = ravel_pytree(gradx.schedule_free_eval_params(state, p))[0]
    np.testing.assert_allclose(x, ref_state["x"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ravel_pytree(state.inner_state.z)[0], ref_state["z"], rtol=1e-12)
    if warmup_steps is None:  # no warmup: γ_{t−1} = γ_t, the paper's own algorithm
        y, paper = ravel_pytree(params(jnp.float64))[0], {}
        for t, g in enumerate(grads(jnp.float64), start=1):
            flat_g = np.asarray(ravel_pytree(g)[0])
            y, paper = reference_sgd(y, paper, lambda _, fg=flat_g: fg, t, **hp)
        np.testing.assert_allclose(theta, y, rtol=1e-14)


def test_set_hyperparams_does_not_retrace_and_a_vmap_sweep_equals_separate_runs():
    check_no_retrace(
        lambda **kw: gradx.schedule_free_adamw(**{"learning_rate": 0.05, "warmup_steps": 3, **kw}),
        {"learning_rate": 0.02, "warmup_steps": 5, "b1": 0.7, "b2": 0.99, "eps": 1e-4,
         "weight_decay": 0.01, "weight_lr_power": 1.0},
    )  # fmt: skip
    check_vmap_over_learning_rates(gradx.schedule_free_sgd)


S = gradx.schedules
# a gradx schedule and new numbers for it: each run set against a fresh build of the new ones
NEW_NUMBERS = [
    (lambda n: S.linear_schedule(n.get("init_value", 0.0), 0.1, n.get("transition_steps", 8)),
     {"transition_steps": 2}),
    (lambda n: S.linear_schedule(n.get("init_value", 0.0), 0.1, n.get("transition_steps", 8)),
     {"init_value": 0.05}),
    (lambda n: S.warmup_cosine_decay_schedule(0.0, n.get("peak_value", 0.1),
                                              n.get("warmup_steps", 4), 20),
     {"warmup_steps": 2, "peak_value": 0.2}),
]  # fmt: skip


@pytest.mark.parametrize("make", [gradx.schedule_free_sgd, gradx.schedule_free_adamw])
@pytest.mark.parametrize("schedule, numbers", NEW_NUMBERS)
def test_set_schedule_numbers_reach_the_averaging_weights_as_a_fresh_build(make, schedule, numbers):
    # the weights' γ(t) (so γ_max, Σw and c) is the schedule on the state's numbers, as z's
    opt, fresh = make(schedule({})), make(schedule(numbers))
    changed = {f"learning_rate/{k}": v for k, v in numbers.items()}
    p = params(jnp.float32)

    def run(o, state):
        q = p
        for g in grads(jnp.float32, 8):
            u, state = o.update(g, state, q)
            q = optax.apply_updates(q, u)
        return q, state.inner_state.max_lr, state.inner_state.weight_sum

    got = run(opt, gradx.set_hyperparams(opt.init(p), **changed))
    want = run(fresh, fresh.init(p))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
    # not the schedule as built: its run is another
    assert _err([run(opt, opt.init(p))[0]], [want[0]]) > 1e-4


@pytest.mark.parametrize("make", [gradx.schedule_free_sgd, gradx.schedule_free_adamw])
def test_a_vmap_over_schedule_numbers_equals_fresh_builds(make):
    p, gs = params(jnp.float32), grads(jnp.float32, 8)
    opt = make(S.linear_schedule(0.0, 0.1, 8))
    steps = jnp.array([2, 6], jnp.int32)
    states = jax.vmap(
        lambda n: gradx.set_hyperparams(opt.init(p), **{"learning_rate/transition_steps": n})
    )(steps)

    def run(o, state):
        q = p
        for g in gs:
            u, state = o.update(g, state, q)
            q = optax.apply_updates(q, u)
        return q, state.inner_state.max_lr, state.inner_state.weight_sum

    batched = jax.jit(jax.vmap(lambda s: run(opt, s)))(states)
    for k, n in enumerate([2, 6]):
        alone = make(S.linear_schedule(0.0, 0.1, n))
        want = jax.jit(lambda s, alone=alone: run(alone, s))(alone.init(p))
        for got, w in zip(jax.tree.leaves(batched), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(got[k], w, rtol=1e-6, atol=1e-7)


def test_sweep_over_schedule_numbers_equals_fit_of_fresh_builds():
    from checkpoint_problem import DATA, P0, loss_fn

    def make(n):
        return gradx.schedule_free_adamw(S.linear_schedule(0.0, 0.05, n), weight_decay=0.01)

    common = dict(batch_size=None, epochs=4, key=None, progress=False)
    grid = {"learning_rate/transition_steps": np.array([1, 3])}
    swept = gradx.sweep(loss_fn, P0, make(8), DATA, grid, **common)
    for k, n in enumerate([1, 3]):
        alone = gradx.fit(loss_fn, P0, make(n), DATA, **common)
        # sweep returns the params trained (y), fit x and y
        got = (swept.params, swept.opt_state.inner_state.weight_sum)
        want = (alone.train_params, alone.opt_state.inner_state.weight_sum)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a[k], b, rtol=1e-5, atol=1e-7)
        # point(k) is the FitResult fit gives: x as params, y as train_params
        point = swept.point(k)
        for got, want in ((point.params, alone.params), (point.train_params, alone.train_params)):
            for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
        assert not np.allclose(point.params["w"], point.train_params["w"])  # x is not y


def test_eval_params_finds_the_state_wherever_it_sits_and_refuses_without_one():
    p, gs = params(jnp.float32), grads(jnp.float32, 4)
    sgd = gradx.schedule_free_sgd(0.1, 2, b1=0.8, weight_decay=0.01)
    builds = {
        "lifted": sgd,
        "chain": optax.chain(optax.clip_by_global_norm(1e6), sgd),  # the clip never bites
        "flat": gradx.flat(sgd),
        "flat, m kept whole": gradx.flat(sgd, max_leaf_size=5),
        "block": gradx.schedule_free(gradx.chain(
            gradx.add_decayed_weights(0.01), gradx.scale_by_learning_rate(0.1)), 0.1, 0.8),
    }  # fmt: skip
    runs = {name: _run(opt, jnp.float32, gs) for name, opt in builds.items()}
    want = gradx.schedule_free_eval_params(runs["lifted"][1], runs["lifted"][0][-1])
    for name, (traj, state) in runs.items():
        if name != "block":  # the block has no warmup: its own numbers, checked below
            x = gradx.schedule_free_eval_params(state, traj[-1])
            exact = not name.startswith("flat")  # packed: XLA fuses a buffer differently
            assert_same_trajectory([x], [want], dict(rtol=0, atol=0) if exact else F32)
    # the block equals optax.contrib.schedule_free around the same base, optax's state too
    their_base = optax.chain(optax.add_decayed_weights(0.01), optax.sgd(0.1))
    with jax.numpy_dtype_promotion("standard"):
        theirs, their_state = _run(optax.contrib.schedule_free(their_base, 0.1, 0.8), jnp.float32,
                                   gs)  # fmt: skip
    ours, state = runs["block"]
    assert_same_trajectory(ours, theirs, F32)
    x = gradx.schedule_free_eval_params(state, ours[-1])
    assert_same_trajectory([x], [optax.contrib.schedule_free_eval_params(their_state, theirs[-1])],
                           F32)  # fmt: skip
    assert_same_trajectory([gradx.schedule_free_eval_params(their_state, theirs[-1])],
                           [optax.contrib.schedule_free_eval_params(their_state, theirs[-1])],
                           dict(rtol=0, atol=0))  # fmt: skip
    # refused: no Schedule-Free state, two of them, params of another shape
    with pytest.raises(ValueError, match=r"^schedule_free_eval_params: state must hold a "
                       r"Schedule-Free state .*got a HyperparamsState with none"):  # fmt: skip
        gradx.schedule_free_eval_params(gradx.adam(0.1).init(p), p)
    two = optax.chain(sgd, sgd).init(p)
    with pytest.raises(ValueError, match=r"must hold one Schedule-Free state per param, got 2"):
        gradx.schedule_free_eval_params(two, p)
    with pytest.raises(ValueError, match=r"must hold one Schedule-Free state per param, got 2"):
        gradx.schedule_free_eval_params(gradx.flat(optax.chain(sgd, sgd)).init(p), p)
    with pytest.raises(gradx.TreeMismatchError, match=r"^schedule_free_eval_params: params must"):
        gradx.schedule_free_eval_params(sgd.init(p), {"m": p["m"], "v": p["v"]})
    with pytest.raises(gradx.TreeMismatchError, match=r"inside gradx.flat, and no layout"):
        gradx.schedule_free_eval_params(runs["flat"][1], {"m": p["m"], "v": p["v"]})


def _is_sf(node):
    return isinstance(node, ScheduleFreeState)


def test_eval_params_of_a_partition_is_x_where_schedule_free_runs_and_y_elsewhere():
    # optax.partition gives each group its own state, its z masked over the other groups'
    # params: x comes from the state that holds each param (optax's eval of that sub-state).
    p, gs = params(jnp.float32), grads(jnp.float32, 4)
    names = {k: ("sgd" if k == "m" else "adamw" if k == "v" else "adam") for k in p}
    opt = optax.partition(
        {"sgd": gradx.schedule_free_sgd(0.1, b1=0.8), "adamw": gradx.schedule_free_adamw(0.1),
         "adam": gradx.adam(0.1)}, names)  # fmt: skip
    traj, state = _run(opt, jnp.float32, gs)
    y = traj[-1]
    x = gradx.schedule_free_eval_params(state, y)
    for group, key in (("sgd", "m"), ("adamw", "v")):
        (sf,) = [n for n in jax.tree.leaves(state.inner_states[group], is_leaf=_is_sf)
                 if _is_sf(n)]  # fmt: skip
        with jax.numpy_dtype_promotion("standard"):
            want = (y[key] - (1 - sf.b1) * sf.z[key]) / sf.b1
        np.testing.assert_allclose(x[key], want, rtol=1e-6)
        assert not np.allclose(x[key], y[key])
    for key in p:
        if names[key] == "adam":
            np.testing.assert_array_equal(x[key], y[key])  # not Schedule-Free's: y itself


def _alpha_reference(t, gs, learning_rate, warmup_steps, b1, weight_lr_power, b2=None, eps=None):
    """α_ef of step t from the formulas in NumPy float64: the factor on g_t in y's step,
    γ_{t−1}·(1 − β + β·c_t), over (√v̂_t + ε) for AdamW; γ_s = γ·min(s/W, 1) and
    c_t = w_t/Σw, w_s = (max_{i≤s} γ_i)^r."""
    gamma = [learning_rate * min(s / warmup_steps, 1.0) for s in range(t + 1)]
    w = [max(gamma[1 : s + 1]) ** weight_lr_power for s in range(1, t + 1)]
    c = w[-1] / sum(w) if sum(w) > 0 else 0.0
    alpha = gamma[t - 1] * (1 - b1 + b1 * c)
    if b2 is None:
        return alpha
    v = 0.0
    for g in gs[:t]:
        v = b2 * v + (1 - b2) * g * g
    return alpha / (np.sqrt(v / (1 - b2**t)) + eps)


def test_effective_learning_rate_against_numpy_and_the_step():
    hp = dict(learning_rate=0.05, warmup_steps=3, b1=0.8, weight_lr_power=1.5)
    adamw = gradx.schedule_free_adamw(**hp, b2=0.9, eps=1e-3, weight_decay=0.01)
    sgd = gradx.schedule_free_sgd(**hp, weight_decay=0.01)
    gs = grads(jnp.float64, 8)
    for opt, extra in ((adamw, dict(b2=0.9, eps=1e-3)), (sgd, {})):
        p = params(jnp.float64)
        state = opt.init(p)
        for t, g in enumerate(gs, start=1):
            if opt is sgd:  # its step is linear in g: d(step)/dg is −α_ef, exactly
                step = lambda g, s=state, q=p: sgd.update(g, s, q)[0]
                _, du = jax.jvp(step, (g,), (g,))
            u, state = opt.update(g, state, p)
            alpha = gradx.effective_learning_rate(opt, state, p, g)
            if t in (1, 2, 4, 8):
                for k in p:
                    want = _alpha_reference(t, [np.asarray(x[k]) for x in gs], **hp, **extra)
                    np.testing.assert_allclose(
                        alpha[k],
                        np.broadcast_to(want, p[k].shape),
                        rtol=1e-12,
                        atol=1e-16,
                        err_msg=f"{k} at {t}",
                    )
            if opt is sgd:
                assert_same_trajectory([du], [jax.tree.map(lambda a, x: -a * x, alpha, g)], F64)
            p = optax.apply_updates(p, u)
    assert float(jnp.max(alpha["m"])) > 0


def test_bad_arguments_are_refused():
    cases = [
        (lambda: gradx.schedule_free_adamw(b1=0.0), ValueError,
         r"^schedule_free_adamw: b1 must be in \(0, 1\], got 0.0"),
        (lambda: gradx.schedule_free_sgd(0.1, 0), ValueError,
         r"^schedule_free_sgd: warmup_steps must be an integer >= 1, got 0"),
        (lambda: gradx.schedule_free_sgd(0.1, weight_decay=-1.0), ValueError,
         r"^schedule_free_sgd: weight_decay must be >= 0, got -1.0"),
        (lambda: gradx.schedule_free_adamw(optax.constant_schedule(0.1), 5), TypeError,
         r"^schedule_free_adamw: learning_rate must be a number with warmup_steps"),
        (lambda: gradx.schedule_free_sgd(0.1, lambda t: 5), TypeError,
         r"^schedule_free_sgd: warmup_steps must be an integer >= 1 or None, got a schedule"),
        (lambda: gradx.schedule_free(gradx.sgd(0.1), 0.1, b1=0), ValueError,
         r"^schedule_free: b1 must be in \(0, 1\], got 0"),
        (lambda: gradx.schedule_free(gradx.sgd, 0.1), TypeError,
         r"^schedule_free: base_optimizer must be an optax GradientTransformation"),
        (lambda: gradx.schedule_free_sgd(0.1, state_dtype="int8"), TypeError,
         r"^schedule_free_sgd: state_dtype must be a real floating dtype \(e.g. jnp.float32\) "
         r"or None, got 'int8': it is the dtype z \(the base's iterate, a copy of the params\) "
         r"is stored in, not a moment's, and 'int8' quantises moments only$"),
        (lambda: gradx.schedule_free_adamw(0.1, state_dtype="int8"), TypeError,
         r"^schedule_free_adamw: state_dtype must be a real floating dtype .* got 'int8': it "
         r"is the dtype z"),
        (lambda: gradx.schedule_free(gradx.sgd(0.1), 0.1, state_dtype=jnp.int32), TypeError,
         r"^schedule_free: state_dtype must be a real floating dtype"),
        (lambda: gradx.schedule_free_sgd(0.1).update({"w": jnp.ones(2)},
                                                      gradx.schedule_free_sgd(0.1).init(
                                                          {"w": jnp.ones(2)})),
         ValueError, r"^schedule_free: update needs the params"),
    ]  # fmt: skip
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


def test_fit_evaluates_and_returns_the_average_and_resumes_exactly(tmp_path):
    from checkpoint_problem import DATA, P0, loss_fn, run

    opt = gradx.schedule_free_adamw(0.05, 2, weight_decay=0.01)

    def eval_fn(q, data):
        return {"eval_loss": loss_fn(q, data), "w0": q["w"][0]}

    # full batch (packed by fit, as by default) against the same steps by hand
    result = gradx.fit(loss_fn, P0, opt, DATA, batch_size=None, epochs=4, key=None,
                       eval_fn=eval_fn, progress=False)  # fmt: skip
    y, state, seen = P0, opt.init(P0), []
    for _ in range(4):
        u, state = opt.update(jax.grad(loss_fn)(y, DATA), state, y)
        y = optax.apply_updates(y, u)
        seen.append(float(gradx.schedule_free_eval_params(state, y)["w"][0]))
    x = gradx.schedule_free_eval_params(state, y)
    assert_same_trajectory([result.params, result.train_params], [x, y], F64)
    np.testing.assert_allclose(result.history["w0"], seen, rtol=1e-12)  # eval_fn saw x
    np.testing.assert_allclose(result.history["eval_loss"][-1], loss_fn(x, DATA), rtol=1e-12)
    assert abs(float(loss_fn(x, DATA)) - float(loss_fn(y, DATA))) > 1e-6  # x is not y
    # streamed: eval_fn sees x too
    streamed = gradx.fit(loss_fn, P0, opt, lambda epoch: iter([DATA]), batch_size=None,
                         epochs=2, key=None, eval_fn=eval_fn, eval_data=DATA, progress=False)  # fmt: skip
    np.testing.assert_allclose(streamed.history["w0"], seen[:2], rtol=1e-12)
    # minibatches, leaf by leaf: interrupted and resumed from a checkpoint is the whole run
    whole = run(epochs=3, opt=opt, flat=False)

    class Interrupt(Exception):
        pass

    def interrupt(epoch, logs, params, opt_state):
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        run(tmp_path, epochs=3, callbacks=[interrupt], opt=opt, flat=False)
    resumed = run(tmp_path, epochs=3, resume=True, opt=opt, flat=False)
    for a, b in ((resumed.params, whole.params), (resumed.train_params, whole.train_params),
                 (resumed.opt_state, whole.opt_state)):  # fmt: skip
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_array_equal(u, v)
    x = gradx.schedule_free_eval_params(whole.opt_state, whole.train_params)
    assert_same_trajectory([whole.params], [x], F64)  # eager here, compiled in fit
    # Schedule-Free averages by itself: an EMA of y beside it is refused, by name
    with pytest.raises(ValueError, match=r"fit: ema must be None with a Schedule-Free optimizer, "
                       r"got 0\.9"):  # fmt: skip
        gradx.fit(loss_fn, P0, opt, DATA, batch_size=None, epochs=1, key=None, ema=0.9,
                  progress=False)  # fmt: skip
