"""gradx.muon and its blocks (orthogonalize, scale_by_shape, split_matrices, scale_by_muon):
optax.contrib.muon run live, a NumPy transcription of the Newton–Schulz iteration, the
hyperparameters in the state, and what Muon refuses (gradx.flat, the effective learning rate).
torch's Muon (gradx.compat.torch.Muon) is replayed against torch in tests/test_compat.py; its
argument checks are here.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.contrib
import pytest
from live_twin import F32, F64, check_no_retrace, check_vmap_over_learning_rates

import gradx
import gradx.compat.torch

MDN = gradx.MuonDimensionNumbers
STEPS = 40
SHAPES = {"big": (64, 96), "small": (3, 2), "cube": (4, 3, 5), "v": (7,), "s": ()}
# the cube is a batch of 3 matrices 4×5 (axis 1 is the batch axis)
DIMS = {"big": MDN(), "small": MDN(), "cube": MDN(reduction_axis=0, output_axis=2)}
DIMS |= {"v": None, "s": None}


def _data(dtype):
    rng = np.random.default_rng(0)
    params = {k: rng.normal(size=s) for k, s in SHAPES.items()}
    grads = {k: rng.normal(size=(STEPS, *s)) for k, s in SHAPES.items()}
    grads["v"] = grads["v"] * (rng.random((STEPS, 7)) > 0.2)  # exact zeros for Adam
    grads["small"][3] = 0.0  # a zero momentum step is not one: m ≠ 0 by then
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), (params, grads))


def _trajectory(opt, dtype):
    """The params after each of the STEPS steps, one jitted scan."""
    params, grads = _data(dtype)

    def body(carry, g):
        p, state = carry
        updates, state = opt.update(g, state, p)
        p = optax.apply_updates(p, updates)
        return (p, state), p

    return jax.jit(lambda p: jax.lax.scan(body, (p, opt.init(p)), grads)[1])(params)


MASK = {"big": True, "small": False, "cube": True, "v": False, "s": False}
# Every option that changes the numbers, at once in float64 (each compile costs seconds).
VARIANTS = dict(
    nesterov=False, weight_decay=0.1, weight_decay_mask=MASK, adam_weight_decay=0.01,
    adaptive=True, consistent_rms=0.2, adam_learning_rate=0.01, ns_coeffs="dion",
    preconditioning="aol",
)  # fmt: skip
CASES = [(jnp.float32, {}), (jnp.bfloat16, {}), (jnp.float64, VARIANTS)]
IDS = ["float32", "bfloat16", "float64-variants"]


@pytest.mark.parametrize("dtype, kwargs", CASES, ids=IDS)
def test_trajectory_equals_optax_contrib_muon(dtype, kwargs):
    kwargs = dict(learning_rate=0.02, muon_weight_dimension_numbers=DIMS, **kwargs)
    with jax.numpy_dtype_promotion("standard"), jax.enable_x64(dtype == jnp.float64):
        ours = _trajectory(gradx.muon(**kwargs), dtype)
        theirs = _trajectory(optax.contrib.muon(**kwargs), dtype)
    # float64: the adaptive scale ⟨M, O⟩ sums 6,144 products, in another order than optax's
    tol = {jnp.float32: F32, jnp.float64: {**F64, "atol": 1e-13}}.get(dtype)
    for k in SHAPES:
        a, b = ours[k], theirs[k]
        assert a.dtype == b.dtype == dtype
        if tol is not None:
            np.testing.assert_allclose(a, b, **tol, err_msg=k)
            continue
        # bfloat16: optax iterates in bfloat16, gradx in float32 (its momentum's dtype); both
        # steps have singular values near 1, so the params stay within a few bf16 steps.
        # A step of γ·s·O ≈ 0.003 is a third of a bf16 step at 1: whether it rounds away
        # turns on the last bits, so a weight may drift by a few bf16 steps (8 at 1: 0.06).
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        np.testing.assert_allclose(a, b, rtol=0.1, atol=0.02, err_msg=k)
        assert np.mean(np.abs(a - b)) < 8e-3, k


def _three_steps(opt, params):
    rng = np.random.default_rng(1)
    state = opt.init(params)
    for _ in range(3):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        updates, state = jax.jit(opt.update)(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


@pytest.mark.parametrize("shape", [(0, 5), (5, 0)])
def test_zero_size_matrices_get_a_zero_size_update(shape):
    # A matrix with no rows (or no columns) has fan_in or fan_out 0: fan_out/fan_in raised
    # ZeroDivisionError (optax.contrib.muon still does for (0, 5)).
    params = {"w": jnp.ones((3, 4)), "v": jnp.ones(6)}
    with jax.numpy_dtype_promotion("standard"):
        want = _three_steps(optax.contrib.muon(0.02), params)
    got = _three_steps(gradx.muon(0.02), {**params, "z": jnp.ones(shape)})
    assert got["z"].shape == shape
    for k in params:
        np.testing.assert_allclose(got[k], want[k], **F32, err_msg=k)

    alone = _three_steps(gradx.compat.torch.Muon(0.02), {"w": params["w"]})
    got = _three_steps(gradx.compat.torch.Muon(0.02), {"w": params["w"], "z": jnp.ones(shape)})
    assert got["z"].shape == shape
    np.testing.assert_array_equal(got["w"], alone["w"])


def test_signature_is_optax_contrib_muon():
    # optax's arguments, then gradx's keyword-only state_dtype pair, which optax lacks
    for ours, theirs in ((gradx.muon, optax.contrib.muon),
                         (gradx.scale_by_muon, optax.contrib.scale_by_muon)):  # fmt: skip
        p, q = inspect.signature(ours).parameters, inspect.signature(theirs).parameters
        extra = list(p.values())[-2:]
        assert [x.name for x in extra] == ["state_dtype", "stochastic_rounding"]
        assert all(x.kind is inspect.Parameter.KEYWORD_ONLY for x in extra)
        p = {k: v for k, v in p.items() if k not in ("state_dtype", "stochastic_rounding")}
        assert list(p) == list(q)
        for a, b in zip(p.values(), q.values(), strict=True):
            assert (a.name, a.kind, a.default) == (b.name, b.kind, b.default), a.name


def _newton_schulz(x, coeffs=(3.4445, -4.7750, 2.0315), steps=5, eps=1e-8):
    """Jordan's quintic iteration on one matrix, written from the post (NumPy float64)."""
    a, b, c = coeffs
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / (np.linalg.norm(x) + eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def test_newton_schulz_against_numpy_and_near_orthogonal():
    rng = np.random.default_rng(3)
    coeffs = np.asarray((3.4445, -4.7750, 2.0315))
    with jax.enable_x64(True):
        for shape in ((5, 8), (8, 5), (16, 24)):
            x = rng.normal(size=shape)
            got = gradx.orthogonalize_via_newton_schulz(jnp.asarray(x), coeffs)
            np.testing.assert_allclose(got, _newton_schulz(x), rtol=1e-12, atol=1e-13)
            s = np.linalg.svd(np.asarray(got), compute_uv=False)
            assert 0.6 < s.min() and s.max() < 1.25, (shape, s.min(), s.max())
        # a cube of 3 matrices (4, 5) along axis 1, and a zero matrix (0, not 0/0, at ε = 0)
        cube = rng.normal(size=(4, 3, 5))
        got = gradx.orthogonalize_via_newton_schulz(
            jnp.asarray(cube), coeffs, dimension_numbers=MDN(reduction_axis=0, output_axis=2)
        )
        for i in range(3):
            np.testing.assert_allclose(got[:, i], _newton_schulz(cube[:, i]), rtol=1e-12)
        zero = gradx.orthogonalize_via_newton_schulz(jnp.zeros((3, 4)), coeffs, eps=0.0)
        np.testing.assert_array_equal(zero, 0.0)


def test_scale_by_muon_equals_optax_and_blocks_compose():
    # optax's scale_by_muon (every leaf a matrix), then the blocks by hand: gradx.muon's chain
    dims = {"small": MDN(), "cube": DIMS["cube"]}
    params, grads = _data(jnp.float64)
    params = {k: params[k] for k in dims}
    with jax.enable_x64(True), jax.numpy_dtype_promotion("standard"):
        spec = dict(weight_dimension_numbers=dims)
        ours = gradx.chain(gradx.scale_by_muon(beta=0.9, **spec), gradx.scale_by_shape(dims))
        theirs = optax.contrib.scale_by_muon(beta=0.9, **spec)
        s1, s2 = ours.init(params), theirs.init(params)
        update1, update2 = jax.jit(ours.update), jax.jit(theirs.update)
        for k in range(3):
            g = {n: grads[n][k] for n in dims}
            u1, s1 = update1(g, s1, params)
            u2, s2 = update2(g, s2, params)
            # scale_by_shape: the cube's fans are 4 (in) and 5 (out): √(5/4)
            np.testing.assert_allclose(u1["cube"], np.sqrt(5 / 4) * u2["cube"], rtol=1e-12)
            np.testing.assert_allclose(u1["small"], u2["small"], rtol=1e-12)


def test_set_hyperparams_does_not_retrace():
    check_no_retrace(
        lambda **kw: gradx.muon(**{"learning_rate": 0.05, **kw}),
        {"learning_rate": 0.02, "beta": 0.8, "weight_decay": 0.1, "adam_b2": 0.99},
    )


def test_vmap_over_three_learning_rates_equals_three_runs():
    check_vmap_over_learning_rates(gradx.muon)


def test_hyperparameters_in_the_state_and_static_arguments():
    state = gradx.muon(0.1, adam_learning_rate=0.01).init({"w": jnp.ones((2, 3))})
    assert set(gradx.hyperparams(state)) == {
        "learning_rate", "beta", "eps", "weight_decay", "adam_b1", "adam_b2", "adam_eps_root",
        "adam_weight_decay", "adam_learning_rate",
    }  # fmt: skip
    # ns_coeffs and ns_steps are static (the unrolled iteration), not in the state
    with pytest.raises(ValueError, match=r"^set_hyperparams: .*ns_steps"):
        gradx.set_hyperparams(state, ns_steps=3)


def test_effective_learning_rate_refuses_muon_by_name():
    params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}
    matrix = {"w": params["w"]}
    for opt, p in (
        (gradx.muon(0.1), params),
        (gradx.chain(gradx.scale_by_muon(), gradx.scale_by_learning_rate(0.1)), matrix),
        (gradx.compat.torch.Muon(), matrix),
    ):
        g = jax.tree.map(lambda x: x + 0.5, p)
        _, state = opt.update(g, opt.init(p), p)
        with pytest.raises(TypeError, match=r"Muon's step is not coordinate-wise"):
            gradx.effective_learning_rate(opt, state, p, g)


def test_split_matrices_gain_joins_its_branches():
    # two coordinate-wise branches: α_ef is each branch's on its own leaves
    # (the matrices' branch decays its weights: α_ef reads the params of its own leaves)
    opt = gradx.split_matrices(
        gradx.chain(gradx.add_decayed_weights(0.5), gradx.scale_by_learning_rate(0.1)),
        gradx.scale_by_learning_rate(0.3),
    )
    params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4), "cube": jnp.ones((2, 2, 2))}
    updates, state = opt.update(params, opt.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.15)
    np.testing.assert_allclose(updates["cube"], -0.3)
    alpha = gradx.effective_learning_rate(opt, state, params, grads=params)
    assert {k: float(v.max()) for k, v in alpha.items()} == pytest.approx(
        {"w": 0.1, "b": 0.3, "cube": 0.3}
    )


def test_flat_refuses_muon():
    params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}
    for opt in (gradx.muon(0.1), gradx.orthogonalize()):
        with pytest.raises(ValueError, match=r"must not be packed by gradx.flat, got a packed"):
            gradx.flat(opt).init(params)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: gradx.muon(0.1, beta=1.0), ValueError, r"^muon: beta must be in \[0, 1\)"),
        (lambda: gradx.muon(0.1, ns_steps=2.5), ValueError, r"^muon: ns_steps must be an integer"),
        (lambda: gradx.muon(0.1, ns_coeffs=(1.0, 2.0)), ValueError, r"^muon: ns_coeffs must be 3"),
        (lambda: gradx.muon(0.1, ns_coeffs="muon"), ValueError, r"^muon: ns_coeffs must be .*dion"),
        (lambda: gradx.muon(0.1, ns_coeffs="dion", ns_steps=3), ValueError,
         r"^muon: ns_steps must be >= the 5 rows of ns_coeffs"),
        (lambda: gradx.muon(0.1, preconditioning="polar"), ValueError, r"^muon: preconditioning"),
        (lambda: gradx.muon(0.1, nesterov="yes"), TypeError, r"^muon: nesterov must be a bool"),
        (lambda: gradx.muon(0.1, mu_dtype="int8"), TypeError, r"^muon: mu_dtype must be a real"),
        (lambda: gradx.compat.torch.Muon(adjust_lr_fn="rms"), ValueError,
         r"^Muon: adjust_lr_fn must be None, 'original' or 'match_rms_adamw', got 'rms'"),
        (lambda: gradx.compat.torch.Muon(ns_steps=100), ValueError,
         r"^Muon: ns_steps must be an integer in \[0, 100\)"),
        (lambda: gradx.compat.torch.Muon(ns_coefficients=(1.0, 2.0)), ValueError,
         r"^Muon: ns_coefficients must be 3 numbers \(a, b, c\), got \(1.0, 2.0\)$"),
        (lambda: gradx.compat.torch.Muon(ns_coefficients=np.ones((5, 3))), ValueError,
         r"^Muon: ns_coefficients must be 3 numbers \(a, b, c\), got array"),
        (lambda: gradx.compat.torch.Muon(momentum=-0.1), ValueError, r"^Muon: momentum must be >= 0"),
        (lambda: gradx.compat.torch.Muon(lr=-1.0), ValueError, r"^Muon: lr must be >= 0"),
    ],
)  # fmt: skip
def test_bad_arguments_are_refused(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_bad_leaves_are_refused_by_name():
    with pytest.raises(
        ValueError, match=r"^Muon: params must be 2-D matrices .* shape \(4,\) at \['b'\]"
    ):
        gradx.compat.torch.Muon().init({"w": jnp.ones((3, 4)), "b": jnp.zeros(4)})
    with pytest.raises(TypeError, match=r"^Muon: params must be real"):
        gradx.compat.torch.Muon().init({"w": jnp.ones((3, 4), jnp.complex64)})
    with pytest.raises(ValueError, match=r"^orthogonalize: every leaf must be a matrix .* \['b'\]"):
        gradx.orthogonalize().init({"w": jnp.ones((3, 4)), "b": jnp.zeros(4)})
    with pytest.raises(ValueError, match=r"must have rank >= 2, got shape \(4,\)"):
        gradx.muon(0.1, muon_weight_dimension_numbers={"b": MDN()}).init({"b": jnp.zeros(4)})
    with pytest.raises(ValueError, match=r"reduction and output axes must be disjoint"):
        gradx.orthogonalize(weight_dimension_numbers=MDN(0, -3)).init(jnp.ones((3, 4, 2)))
