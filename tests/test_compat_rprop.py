"""gradx.compat.torch.Rprop: iRprop⁻ as torch 2.13 runs it.

The recorded torch trajectories are replayed with every other record in test_compat.py;
here: the NumPy transcription, the first-step clamp, maximize, state and errors.
"""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference_sign as ref
from golden import problems
from test_compat import RECORDS as RECORDS_ALL
from test_compat import replay

import gradx

RECORDS = [r for lib, r in RECORDS_ALL if lib == "torch" and r["cls"] == "Rprop"]


def test_golden_file_has_rprop_records_for_both_problems():
    # test_compat.py replays every record; these are what Rprop's coverage rests on.
    assert {r["problem"] for r in RECORDS} == set(problems.PROBLEMS)
    assert any(r["kwargs"] == {} for r in RECORDS)


@pytest.mark.parametrize("problem", problems.PROBLEMS)
def test_matches_the_numpy_irprop_minus_transcription(problem):
    kwargs = {"learning_rate": 0.05, "eta_plus": 1.5, "eta_minus": 0.3, "max_step": 0.2}
    got, _ = replay(
        gradx.compat.torch.Rprop(0.05, etas=(0.3, 1.5), step_sizes=(1e-6, 0.2)), problem
    )
    grad_fn = problems.grad_fn(problem)
    theta = np.concatenate([problems.PARAMS0["a"], problems.PARAMS0["b"]])
    state = {}
    split = lambda x: {"a": x[:3], "b": x[3:]}
    flat = lambda g: np.concatenate([g["a"], g["b"]])
    for t in range(1, problems.STEPS + 1):
        theta, state = ref.irprop_minus(
            theta, state, lambda x, t=t: flat(grad_fn(t - 1, split(x))), t, **kwargs
        )
        np.testing.assert_allclose(got["a"][t - 1], theta[:3], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got["b"][t - 1], theta[3:], rtol=1e-12, atol=1e-12)


def test_first_step_is_clamped_and_moves():
    # torch clamps lr on the very first step: lr = 1 with max step 0.2 moves by 0.2.
    opt = gradx.compat.torch.Rprop(lr=1.0, step_sizes=(1e-6, 0.2))
    params = {"w": jnp.array([1.0, -1.0, 0.5])}
    updates, _ = opt.update({"w": jnp.array([2.0, -3.0, 0.0])}, opt.init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.2, 0.2, 0.0])


def test_maximize_ascends():
    params = {"w": jnp.array([1.0, -1.0])}
    grads = {"w": jnp.array([2.0, -3.0])}
    up = gradx.compat.torch.Rprop(lr=0.1, maximize=True)
    down = gradx.compat.torch.Rprop(lr=0.1)
    u_up, _ = up.update(grads, up.init(params), params)
    u_down, _ = down.update(grads, down.init(params), params)
    np.testing.assert_allclose(u_up["w"], -u_down["w"])
    np.testing.assert_allclose(u_up["w"], [0.1, -0.1])


def test_returns_a_gradx_optimizer_with_hyperparameters_in_the_state():
    opt = gradx.compat.torch.Rprop(
        lr=0.05, etas=(0.3, 1.5), foreach=True, differentiable=True, capturable=True
    )
    assert isinstance(opt, optax.GradientTransformationExtraArgs)
    state = opt.init({"w": jnp.ones(2)})
    hp = gradx.hyperparams(state)
    assert float(hp["learning_rate"]) == 0.05
    assert (float(hp["eta_minus"]), float(hp["eta_plus"])) == (0.3, 1.5)
    assert (float(hp["min_step"]), float(hp["max_step"])) == (1e-6, 50.0)
    assert set(gradx.hyperparams(gradx.compat.torch.Rprop(maximize=True).init({"w": 1.0}))) == {
        "learning_rate",
        "eta_plus",
        "eta_minus",
        "min_step",
        "max_step",
    }


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"etas": (1.5, 1.2)},
            r"Rprop: etas must be \(eta_minus, eta_plus\) with 0 < eta_minus < 1 < eta_plus, "
            r"got \(1\.5, 1\.2\)",
        ),
        ({"etas": (0.5, 1.0)}, r"Rprop: etas must be .*, got \(0\.5, 1\.0\)"),
        ({"etas": (0.5,)}, r"Rprop: etas must be .*, got \(0\.5,\)"),
        ({"etas": (0.5, float("nan"))}, r"Rprop: etas must be .*, got \(0\.5, nan\)"),
        (
            {"step_sizes": (0.5, 0.1)},
            r"Rprop: step_sizes must be \(min_step, max_step\) with 0 <= min_step <= max_step "
            r"and max_step > 0, got \(0\.5, 0\.1\)",
        ),
        ({"step_sizes": (-1.0, 1.0)}, r"Rprop: step_sizes must be .*, got \(-1\.0, 1\.0\)"),
        ({"lr": -0.1}, r"Rprop: lr must be >= 0, got -0\.1"),
    ],
)
def test_bad_values_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gradx.compat.torch.Rprop(**kwargs)


def test_bad_flags_are_type_errors():
    with pytest.raises(TypeError, match=r"Rprop: maximize must be a bool, got 'yes'"):
        gradx.compat.torch.Rprop(maximize="yes")
    with pytest.raises(TypeError, match=r"Rprop: foreach must be a bool or None, got 1"):
        gradx.compat.torch.Rprop(foreach=1)
