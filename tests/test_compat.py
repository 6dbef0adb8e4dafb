"""gradx.compat.torch and gradx.compat.keras against trajectories recorded from the peers.

``tests/golden/{torch,keras}.json`` were recorded once by ``tests/golden/record.py`` (torch
2.13.0+cpu, Keras 3.15.1 on JAX, float64) on the two problems of ``tests/golden/problems.py``;
every record is replayed here in float64 with the factory of the same name and kwargs.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from golden import problems

import gradx
import gradx.compat.keras
import gradx.compat.torch

GOLDEN = pathlib.Path(__file__).parent / "golden"
LIBRARIES = {"torch": gradx.compat.torch, "keras": gradx.compat.keras}
RECORDS = [
    (library, record)
    for library in LIBRARIES
    for record in json.loads((GOLDEN / f"{library}.json").read_text())["records"]
]


def replay(opt, problem, dtype=jnp.float64):
    """Runs ``opt`` on a golden problem; returns ({name: (STEPS, *shape)}, state)."""
    grad_fn = problems.grad_fn(problem)
    params = {k: jnp.asarray(v, dtype) for k, v in problems.params0(problem).items()}
    state = opt.init(params)
    update = jax.jit(opt.update)
    out = {n: [] for n in params}
    for k in range(problems.STEPS):
        numpy_params = {n: np.asarray(v, np.float64) for n, v in params.items()}
        grads = {n: jnp.asarray(v, dtype) for n, v in grad_fn(k, numpy_params).items()}
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        for n in out:
            out[n].append(np.asarray(params[n], np.float64))
    return {n: np.stack(v) for n, v in out.items()}, state


def _id(item):
    library, record = item
    return f"{library}.{record['cls']}-{record['problem']}-{json.dumps(record['kwargs'], sort_keys=True)}"


@pytest.mark.parametrize("item", RECORDS, ids=_id)
def test_reproduces_the_peer_trajectory(item):
    library, record = item
    factory = getattr(LIBRARIES[library], record["cls"])
    got, _ = replay(factory(**record["kwargs"]), record["problem"])
    for name, want in record["trajectory"].items():
        np.testing.assert_allclose(got[name], np.asarray(want), rtol=1e-6, atol=1e-9)


def test_every_factory_is_covered_by_golden_data():
    for library, module in LIBRARIES.items():
        recorded = {r["cls"] for lib, r in RECORDS if lib == library}
        assert set(module.__all__) <= recorded, library


@pytest.mark.parametrize("library", LIBRARIES)
def test_factories_are_gradx_optimizers_with_hyperparameters_in_state(library):
    for name in LIBRARIES[library].__all__:
        opt = getattr(LIBRARIES[library], name)()
        assert isinstance(opt, optax.GradientTransformationExtraArgs)
        state = opt.init({"w": jnp.ones((2, 2))})  # a matrix: torch's Muon takes only those
        assert gradx.hyperparams(state), name


@pytest.mark.parametrize(
    "make, error, message",
    [
        (
            lambda: gradx.compat.keras.Adam(use_ema=True),
            ValueError,
            r"Adam: use_ema must be False, got True; gradx.fit\(..., ema=ema_momentum\)",
        ),
        (
            lambda: gradx.compat.keras.SGD(ema_overwrite_frequency=5),
            ValueError,
            r"SGD: ema_overwrite_frequency must be None \(it needs use_ema\), got 5; gradx.fit",
        ),
        (  # Keras calls a learning rate function with no argument; gradx schedules take t
            lambda: gradx.compat.keras.Adam(learning_rate=lambda: 0.01),
            TypeError,
            r"Adam: learning_rate must be a number >= 0 or a schedule, a function of the step "
            r"count, got .*, which cannot be called with one",
        ),
        (
            lambda: gradx.compat.keras.SGD(gradient_accumulation_steps=4),
            ValueError,
            r"SGD: gradient_accumulation_steps must be None, got 4; wrap the optimizer in optax.MultiSteps",
        ),
        (
            lambda: gradx.compat.keras.RMSprop(loss_scale_factor=128.0),
            ValueError,
            r"RMSprop: loss_scale_factor must be None",
        ),
        (
            lambda: gradx.compat.keras.Adam(clipnorm=1.0, clipvalue=0.5),
            ValueError,
            r"Adam: only one of clipnorm, clipvalue and global_clipnorm can be set",
        ),
        (
            lambda: gradx.compat.keras.Adam(beta_1=1.0),
            ValueError,
            r"Adam: beta_1 must be in \[0, 1\), got 1\.0",
        ),
        (
            lambda: gradx.compat.keras.SGD(momentum=1.5),
            ValueError,
            r"SGD: momentum must be in \[0, 1\], got 1\.5",
        ),
        (
            lambda: gradx.compat.keras.Adagrad(clipnorm=-1.0),
            ValueError,
            r"Adagrad: clipnorm must be > 0, got -1\.0",
        ),
    ],
)
def test_keras_options_that_cannot_be_honoured_are_errors(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_keras_hyperparameters_use_keras_names():
    state = gradx.compat.keras.AdamW(weight_decay=0.01).init({"w": jnp.ones(2)})
    assert set(gradx.hyperparams(state)) == {
        "learning_rate",
        "beta_1",
        "beta_2",
        "epsilon",
        "weight_decay",
    }


@pytest.mark.parametrize(
    "make, error, message",
    [
        (
            lambda: gradx.compat.torch.SGD(nesterov=True),
            ValueError,
            r"SGD: nesterov=True requires momentum > 0 and dampening = 0, got momentum=0\.0",
        ),
        (
            lambda: gradx.compat.torch.Adam(betas=(1.0, 0.999)),
            ValueError,
            r"Adam: betas must be \(beta1, beta2\) with 0 <= beta < 1, got \(1\.0, 0\.999\)",
        ),
        (
            lambda: gradx.compat.torch.AdamW(lr=-1e-3),
            ValueError,
            r"AdamW: lr must be >= 0, got -0\.001",
        ),
        (
            lambda: gradx.compat.torch.SGD(momentum=-0.5),
            ValueError,
            r"SGD: momentum must be >= 0, got -0\.5",
        ),
        (
            lambda: gradx.compat.torch.RMSprop(alpha=1.5),
            ValueError,
            r"RMSprop: alpha must be in \[0, 1\], got 1\.5",
        ),
        (
            lambda: gradx.compat.torch.Adagrad(lr_decay=-1.0),
            ValueError,
            r"Adagrad: lr_decay must be >= 0",
        ),
        (
            lambda: gradx.compat.torch.NAdam(foreach="yes"),
            TypeError,
            r"NAdam: foreach must be a bool or None, got 'yes'",
        ),
    ],
)
def test_torch_arguments_are_validated_with_torch_names(make, error, message):
    with pytest.raises(error, match=message):
        make()


def _compat_flags():
    """(module, class, flag) for every argument of a compat class whose default is a bool."""
    import inspect

    out = []
    for module in (gradx.compat.keras, gradx.compat.torch):
        for cls in module.__all__:
            for name, p in inspect.signature(getattr(module, cls)).parameters.items():
                if isinstance(p.default, bool):
                    out.append((module, cls, name))
    return out


@pytest.mark.parametrize(
    "module, cls, flag",
    _compat_flags(),
    ids=[f"{m.__name__.rsplit('.', 1)[1]}.{c}.{f}" for m, c, f in _compat_flags()],
)
def test_compat_flags_refuse_non_bools_as_gradx_does(module, cls, flag):
    # keras.Adam(amsgrad="no") ran AMSGrad: a non-empty string is true.
    make = getattr(module, cls)
    for bad in ("no", 1):
        with pytest.raises(TypeError, match=rf"^{cls}: {flag} must be a bool(?: or None)?, got "):
            make(**{flag: bad})
    make(**{flag: np.bool_(False)})  # NumPy's bool is a bool, as for gradx's own flags


@pytest.mark.parametrize(
    "bad", [np.complex64(0.9), 0.9 + 0j, None, 10**400, np.full(2, 0.9), "0.9"], ids=repr
)
def test_torch_pairs_refuse_what_is_not_a_real_scalar(bad):
    # NumPy took a complex beta, dropping its imaginary part with a warning only.
    with pytest.raises(ValueError, match=r"^Adam: betas must be \(beta1, beta2\) with"):
        gradx.compat.torch.Adam(betas=(bad, 0.999))
    with pytest.raises(ValueError, match=r"^Rprop: step_sizes must be \(min_step, max_step\)"):
        gradx.compat.torch.Rprop(step_sizes=(1e-6, bad))


def test_keras_adam_amsgrad_given_a_string_is_refused():
    with pytest.raises(TypeError, match=r"^Adam: amsgrad must be a bool, got 'no'"):
        gradx.compat.keras.Adam(amsgrad="no")


def test_torch_performance_flags_are_accepted_and_change_nothing():
    plain, _ = replay(gradx.compat.torch.Adam(lr=0.1), "stream")
    flagged, _ = replay(
        gradx.compat.torch.Adam(
            lr=0.1, foreach=True, fused=False, capturable=True, differentiable=True
        ),
        "stream",
    )
    for name in plain:
        np.testing.assert_array_equal(plain[name], flagged[name])


def test_ema_momentum_with_first_gradient_init_is_torch_sgd_with_dampening_beta():
    # torch: buf_1 = g_1, buf = b buf + (1 - dampening) g; with dampening = b it is an EMA
    # started at g_1. compat.torch.SGD's dampening is checked against torch's own trajectories.
    torch_sgd, _ = replay(gradx.compat.torch.SGD(lr=0.1, momentum=0.9, dampening=0.9), "stream")
    ema_first, _ = replay(gradx.ema_momentum(0.1, beta=0.9, ema_init="first"), "stream")
    for name in torch_sgd:
        np.testing.assert_allclose(ema_first[name], torch_sgd[name], rtol=1e-12, atol=1e-12)
    zero_init, _ = replay(gradx.ema_momentum(0.1, beta=0.9), "stream")
    assert np.abs(zero_init["a"] - torch_sgd["a"]).max() > 0.1


def test_ema_init_switch_is_validated():
    with pytest.raises(
        ValueError, match=r"ema: init must be one of \('zero', 'first'\), got 'one'"
    ):
        gradx.ema(0.9, init="one")
    with pytest.raises(ValueError, match=r"ema: debias=True corrects a zero start"):
        gradx.ema_momentum(0.1, bias_correction=True, ema_init="first")


def _keras_sgd_step(dtype, **clip):
    params = {"a": jnp.asarray([3.0, -4.0], dtype), "b": jnp.asarray([[12.0]], dtype)}
    opt = gradx.compat.keras.SGD(learning_rate=1.0, **clip)
    updates, _ = jax.jit(opt.update)(params, opt.init(params), params)  # grads = params
    return params, updates


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
def test_keras_global_clipnorm_follows_keras_formula_in_every_float_dtype(dtype):
    # bfloat16 and float16 params raised TypeError (lax.select float32 vs bfloat16).
    params, updates = _keras_sgd_step(dtype, global_clipnorm=6.5)
    grads = {n: np.asarray(g, np.float64) for n, g in params.items()}  # the norm is 13
    norm = np.sqrt(sum(np.sum(g * g) for g in grads.values()))
    for n, g in grads.items():  # Keras's base optimizer: g·(c·min(1/norm, 1/c))
        assert updates[n].dtype == dtype
        want = -(g * (6.5 * min(1 / norm, 1 / 6.5))).astype(dtype)
        np.testing.assert_allclose(np.asarray(updates[n], np.float64), want, rtol=1e-2)
    if dtype == jnp.float32:  # optax.clip_by_global_norm's numbers, bit for bit
        clip = optax.clip_by_global_norm(6.5)  # jitted, as the step is: eager differs by 1 ulp
        clipped, _ = jax.jit(clip.update)(params, optax.EmptyState())
        for n in params:
            np.testing.assert_array_equal(updates[n], -clipped[n])


def test_keras_clipnorm_clips_complex_gradients_by_their_modulus():
    # ‖g‖ was √Σg², which is imaginary for g = [3i, 4i]: the gradient was not clipped.
    params = {"a": jnp.array([3j, 4j], jnp.complex64)}
    opt = gradx.compat.keras.SGD(learning_rate=1.0, clipnorm=1.0)
    updates, _ = opt.update(params, opt.init(params), params)
    np.testing.assert_allclose(updates["a"], -np.array([0.6j, 0.8j]), rtol=1e-6)


def test_keras_clipvalue_refuses_complex_params_by_name():
    # It used to fail at the first update with JAX's "Clip received a complex value".
    params = {"w": jnp.array([1 + 1j, 2 - 1j], jnp.complex64)}
    with pytest.raises(
        TypeError, match=r"^SGD: params must be real with clipvalue, got a complex64"
    ):
        gradx.compat.keras.SGD(0.1, clipvalue=0.5).init(params)
    gradx.compat.keras.SGD(0.1, clipnorm=0.5).init(params)  # a norm clip takes complex params
