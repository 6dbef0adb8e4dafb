"""Constants decided at construction: an ε given > 0 compiles no zero guard (and its rule
becomes ε > 0), an ε_root given as 0 is compiled out (and stays 0); an optimizer built with
ε = 0 or ε_root > 0 keeps the general program and accepts every value its rule allows."""

import pickle
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import gradx

PARAMS = {"a": jnp.ones(3), "b": jnp.ones((2, 2)), "c": jnp.ones(())}
ZERO = jax.tree.map(jnp.zeros_like, PARAMS)


def _selects_and_adds(opt):
    text = jax.jit(opt.update).lower(ZERO, opt.init(PARAMS), PARAMS).as_text()
    return text.count("stablehlo.select"), text.count("stablehlo.add")


def test_eps_given_positive_drops_the_guard_and_tightens_the_rule():
    fast, general = gradx.adam(1e-3), gradx.adam(1e-3, eps=0.0, eps_root=1e-8)
    (s_fast, a_fast), (s_general, a_general) = _selects_and_adds(fast), _selects_and_adds(general)
    assert s_general - s_fast == 3  # one guard per leaf
    assert a_general - a_fast == 3  # + ε_root per leaf (ε is added in both)
    for opt in (fast, general):  # a gradient 0 from the start: a 0 step either way
        updates, _ = opt.update(ZERO, opt.init(PARAMS), PARAMS)
        for u in jax.tree.leaves(updates):
            np.testing.assert_array_equal(u, 0)
    state = fast.init(PARAMS)
    with pytest.raises(ValueError, match=r"set_hyperparams: eps must be > 0 \(the optimizer was "
                       r"built with eps > 0 .*build it with eps=0 to use 0\), got 0.0"):  # fmt: skip
        gradx.set_hyperparams(state, eps=0.0)
    with pytest.raises(ValueError, match=r"eps_root must be 0 \(the optimizer was built with "
                       r"eps_root=0, a constant of its program"):  # fmt: skip
        gradx.set_hyperparams(state, eps_root=1e-8)
    gradx.set_hyperparams(state, eps=1e-3)  # any other ε > 0
    general_state = gradx.set_hyperparams(general.init(PARAMS), eps=0.0, eps_root=0.0)
    updates, _ = general.update(ZERO, general_state, PARAMS)
    assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
    # the state of one build is refused by the other's update, by name
    with pytest.raises(TypeError, match=r"adam: .* given other constants \(eps_root = 0, where "
                       r"this one was given eps > 0, eps_root = 0\)"):  # fmt: skip
        fast.update(ZERO, gradx.adam(1e-3, eps=0.0).init(PARAMS), PARAMS)
    assert gradx.adam(3e-4, eps=1e-6).update is fast.update  # other numbers: one program


def test_a_traced_zero_is_caught_by_the_run_time_checks_and_a_grid_by_its_rule():
    opt = gradx.rmsprop(1e-2)
    state = opt.init(PARAMS)

    def step(s, eps):
        return opt.update(ZERO, gradx.set_hyperparams(s, eps=eps), PARAMS)

    with gradx.check_hyperparams():
        err, _ = jax.jit(checkify.checkify(step))(state, jnp.float32(0.0))
    with pytest.raises(checkify.JaxRuntimeError, match=r"rmsprop: eps \(at step 0\) must be > 0"):
        err.throw()
    with pytest.raises(ValueError, match=r"sweep: grid\['eps'\] must be > 0"):
        gradx.sweep(
            lambda p, b: jnp.sum(p["a"] * b), PARAMS, opt, jnp.ones((4, 3)),
            {"eps": np.array([0.0, 1e-8])}, batch_size=2, epochs=1, key=jax.random.key(0),
            progress=False,
        )  # fmt: skip


def test_variant_states_pickle_across_processes_and_flat_keeps_the_rule():
    flat = gradx.flat(gradx.adam(1e-3))
    state = flat.init(PARAMS)
    with pytest.raises(ValueError, match=r"eps must be > 0 \(the optimizer was built with eps"):
        gradx.set_hyperparams(state, eps=0.0)
    want, _ = flat.update(ZERO, state, PARAMS)
    back = pickle.loads(pickle.dumps(jax.device_get(state)))
    jax.tree.map(np.testing.assert_array_equal, flat.update(ZERO, back, PARAMS)[0], want)
    # a new process finds the variant class by its registered name (importing gradx)
    blob = pickle.dumps(jax.device_get(gradx.adam(1e-3).init(PARAMS)))
    code = (
        "import pickle, sys, gradx; s = pickle.loads(sys.stdin.buffer.read()); "
        "print(type(s).__qualname__, sorted(type(s).facts))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input=blob, capture_output=True, check=True
    ).stdout.decode()
    assert "~eps>0,eps_root=0]" in out and "('eps', '>0'), ('eps_root', '=0')" in out, out


P32 = jax.tree.map(lambda x: x.astype(jnp.float32), PARAMS)  # the suite runs with x64 on
Z32 = jax.tree.map(jnp.zeros_like, P32)


@pytest.mark.parametrize("build", [gradx.adam, gradx.rmsprop, gradx.radam])
@pytest.mark.parametrize("eps", [1e-50, 1e-40])
def test_an_eps_that_is_0_or_subnormal_in_float32_keeps_the_guard(build, eps):
    # > 0 as given, 0 or subnormal as float32 stores it (XLA computes a subnormal as 0): built
    # as eps=0 is, with the zero-denominator guard, so a 0 gradient steps 0 (not 0/0 = NaN)
    opt = build(1e-3, eps=eps)
    state = opt.init(P32)
    assert gradx.hyperparams(state)["eps"] == np.float32(eps)
    assert _selects_and_adds(opt)[0] == _selects_and_adds(build(1e-3, eps=0.0))[0]
    for s in (state, gradx.set_hyperparams(state, eps=0.0)):  # the rule stays eps >= 0
        updates, _ = opt.update(Z32, s, P32)
        for u in jax.tree.leaves(updates):
            np.testing.assert_array_equal(u, 0)
    # built with eps > 0 (no guard), set_hyperparams refuses what computes as 0
    fast = build(1e-3).init(P32)
    how = "rounds to 0\\.0 in float32" if eps < 1e-45 else "is subnormal in float32"
    with pytest.raises(ValueError, match=rf"^set_hyperparams: eps must be > 0 .*, got {eps}, "
                       rf"which {how}, the dtype it is stored in"):  # fmt: skip
        gradx.set_hyperparams(fast, eps=eps)
    # float64 params store it in float64, where it is a normal number
    state = gradx.set_hyperparams(build(1e-3).init(PARAMS), eps=eps)
    assert gradx.hyperparams(state)["eps"] == np.float64(eps)


@pytest.mark.parametrize("eps", [1e-50, 1e-40])
def test_a_block_given_an_eps_that_is_0_in_float32_keeps_the_guard(eps):
    opt = gradx.chain(
        gradx.precondition(gradx.ema(0.9), gradx.rms(0.999), eps),
        gradx.scale_by_learning_rate(0.1),
    )
    updates, _ = opt.update(Z32, opt.init(P32), P32)
    for u in jax.tree.leaves(updates):
        np.testing.assert_array_equal(u, 0)  # 0/0 without the guard
