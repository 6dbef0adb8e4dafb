"""Composition: the fan-out block, a user-composed variant, and zero gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_optimizers import CASES, IDS, PARAMS0, tree_as

import gradx


def _run(opt, grads_seq, params):
    state = opt.init(params)
    out = []
    for g in grads_seq:
        updates, state = jax.jit(opt.update)(g, state, params)
        params = optax.apply_updates(params, updates)
        out.append(params)
    return out


def _stream(n=30, seed=1):
    rng = np.random.default_rng(seed)
    return [{"w": jnp.asarray(rng.normal(size=4))} for _ in range(n)]


def test_a_sequential_chain_of_ema_and_rms_is_not_adam_but_the_fan_out_is():
    params = {"w": jnp.zeros(4)}
    grads = _stream()
    with jax.numpy_dtype_promotion("standard"):  # optax relies on implicit promotion
        adam = _run(optax.adam(0.1), grads, params)[-1]["w"]
    fan_out = gradx.chain(
        gradx.precondition(gradx.ema(0.9, debias=True), gradx.rms(0.999, debias=True), eps=1e-8),
        gradx.scale_by_learning_rate(0.1),
    )
    sequential = gradx.chain(
        gradx.ema(0.9, debias=True),
        gradx.precondition(optax.identity(), gradx.rms(0.999, debias=True), eps=1e-8),
        gradx.scale_by_learning_rate(0.1),
    )
    np.testing.assert_allclose(_run(fan_out, grads, params)[-1]["w"], adam, rtol=1e-10)
    assert np.max(np.abs(_run(sequential, grads, params)[-1]["w"] - adam)) > 0.1


def test_readme_centered_adam_matches_its_numpy_transcription():
    @gradx.optimizer(learning_rate=">= 0", b1="[0, 1)", b2="[0, 1)", eps=">= 0")
    def centered_adam(learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8):
        return gradx.chain(
            gradx.precondition(gradx.ema(b1, debias=True), gradx.rms(b2, centered=True), eps=eps),
            gradx.scale_by_learning_rate(learning_rate),
        )

    grads = _stream(20)
    got = _run(centered_adam(0.05, b2=0.99), grads, {"w": jnp.zeros(4)})
    theta, m, v, a = np.zeros(4), np.zeros(4), np.zeros(4), np.zeros(4)
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g["w"])
        m, v, a = 0.9 * m + 0.1 * g, 0.99 * v + 0.01 * g * g, 0.99 * a + 0.01 * g
        var = v - a * a  # not debiased: at t = 1 the debiased variance would be exactly 0
        theta = theta - 0.05 * (m / (1 - 0.9**t)) / (np.sqrt(var) + 1e-8)
        np.testing.assert_allclose(got[t - 1]["w"], theta, rtol=1e-6, atol=1e-7)
    state = centered_adam(0.05).init({"w": jnp.zeros(4)})
    assert set(gradx.hyperparams(state)) == {"learning_rate", "b1", "b2", "eps"}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_finite_when_a_gradient_is_zero_from_the_start(case):
    opt = case.make(0.1, **case.hp)
    params = tree_as(PARAMS0, jnp.float32)
    zero = jax.tree.map(jnp.zeros_like, params)
    state = opt.init(params)
    for _ in range(3):
        updates, state = jax.jit(opt.update)(zero, state, params)
        leaves = jax.tree.leaves(updates)
        assert all(bool(jnp.all(jnp.isfinite(u))) for u in leaves), case.name
        params = optax.apply_updates(params, updates)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))


@pytest.mark.parametrize(
    "make",
    [
        lambda: gradx.adam(0.1, eps=0.0),
        lambda: gradx.adamax(0.1, eps=0.0),
        lambda: gradx.adamax(0.1, eps=0.0, eps_in_max=False),
        lambda: gradx.amsgrad(0.1, eps=0.0),
        lambda: gradx.nadam(0.1, eps=0.0),
        lambda: gradx.rmsprop(0.1, eps=0.0),
        lambda: gradx.adagrad(0.1, eps=0.0),
    ],
)
def test_zero_gradient_with_zero_eps_gives_a_zero_step_not_nan(make):
    opt = make()
    params = {"w": jnp.ones(3)}
    updates, _ = opt.update({"w": jnp.array([0.0, 1.0, 0.0])}, opt.init(params), params)
    np.testing.assert_array_equal(np.isfinite(updates["w"]), True)
    assert updates["w"][0] == 0 and updates["w"][2] == 0 and updates["w"][1] < 0


def _adam_b2_zero(lr, grads):
    # Adam with β₂ = 0, ε = 0, NumPy: v̂ = g², so the denominator is |g|, 0 where g is 0
    # while m̂ is not; the documented step there is 0.
    m = np.zeros(2)
    for t, g in enumerate(grads, 1):
        m = 0.9 * m + 0.1 * g
        den = np.abs(g)
        u = np.where(den > 0, -lr * (m / (1 - 0.9**t)) / np.where(den > 0, den, 1), 0.0)
    return u


@pytest.mark.parametrize(
    "make, ref",
    [
        (lambda: gradx.adam(0.1, b2=0.0, eps=0.0), _adam_b2_zero),
        (lambda: gradx.adamax(0.1, b2=0.0, eps=0.0), _adam_b2_zero),  # u = max(0·u, |g|)
        (lambda: gradx.nadam(0.1, b2=0.0, eps=0.0), None),
        (
            lambda: gradx.chain(
                gradx.precondition(gradx.ema(0.9, debias=True), gradx.rms(0.0), 0.0),
                gradx.scale_by_learning_rate(0.1),
            ),
            _adam_b2_zero,
        ),
    ],
    ids=["adam", "adamax", "nadam", "blocks"],
)
def test_a_zero_denominator_gives_a_zero_step_though_the_numerator_is_not_zero(make, ref):
    opt = make()
    params = {"w": jnp.ones(2)}
    grads = [np.array([1.0, 1.0]), np.array([0.0, 2.0])]
    state = opt.init(params)
    for g in grads:
        updates, state = jax.jit(opt.update)({"w": jnp.asarray(g)}, state, params)
    assert updates["w"][0] == 0 and updates["w"][1] < 0  # the momentum of step 1 outlives v
    if ref is not None:
        np.testing.assert_allclose(updates["w"], ref(0.1, grads), rtol=1e-12)
    alpha = gradx.effective_learning_rate(opt, state, params, grads={"w": jnp.asarray(g)})
    assert alpha["w"][0] == 0 and alpha["w"][1] > 0  # no step there: α_ef is 0 too


# Each block with numbers: its required numbers, then the number given a schedule instead.
BLOCK_NUMBERS = [
    (gradx.scale_by_learning_rate, {}, "learning_rate"),
    (gradx.add_decayed_weights, {}, "weight_decay"),
    (gradx.decoupled_weight_decay, {"weight_decay": 0.1}, "learning_rate"),
    (gradx.scale_by_trust_ratio, {}, "trust_coefficient"),
    (gradx.trace, {}, "decay"),
    (gradx.ema, {}, "decay"),
    (gradx.nesterov_ema, {"decay": 0.9}, "momentum_decay"),
    (gradx.precondition, {"direction": optax.identity(), "by": gradx.rms(0.9)}, "eps"),
    (gradx.rms, {"decay": 0.9}, "eps_root"),
    (gradx.max_rms, {}, "decay"),
    (gradx.rss, {}, "initial_accumulator_value"),
    (gradx.inf_norm, {}, "decay"),
    (gradx.scale_by_bias_correction, {}, "decay"),
    (gradx.rectified, {"direction": gradx.ema(0.9), "by": gradx.rms(0.99)}, "decay"),
    (gradx.scale_by_adopt, {}, "b2"),
    (gradx.scale_by_factored_rms, {}, "decay_rate"),
    (gradx.clip_by_block_rms, {}, "threshold"),
    (gradx.scale_by_param_block_rms, {}, "min_scale"),
    (gradx.scale_by_shape, {}, "consistent_rms"),
    (gradx.orthogonalize, {}, "eps"),
    (gradx.scale_by_muon, {}, "beta"),
    (gradx.scale_by_rprop, {"learning_rate": 0.1}, "eta_minus"),
    (gradx.scale_by_lion, {}, "b1"),
    (gradx.scale_by_adadelta, {"rho": 0.9}, "eps"),
]


@pytest.mark.parametrize(
    "block, given, name", BLOCK_NUMBERS, ids=[b.__name__ for b, _, _ in BLOCK_NUMBERS]
)
def test_a_block_given_a_schedule_refuses_it_when_built(block, given, name):
    # A block's numbers are fixed when it is built: a schedule (a port of optax's
    # scale_by_learning_rate(schedule)) is refused by name, not left for update to fail on.
    schedule = optax.linear_schedule(0.9, 0.0, 10)
    with pytest.raises(
        TypeError,
        match=rf"^{block.__name__}: {name} must be a number or a scalar array, got the function "
        r"polynomial_schedule\.<locals>\.schedule; for a schedule, build an optimizer with it "
        r"\(gradx\.sgd\(schedule\)\) or declare one with @gradx\.optimizer$",
    ):
        block(**given, **{name: schedule})


def test_a_schedule_reaches_blocks_only_through_an_optimizer():
    with pytest.raises(TypeError, match=r"^ema: decay must be .*, got the function .*<lambda>;"):
        gradx.ema(lambda count: 0.9)
    with pytest.raises(TypeError, match=r"^scale_by_learning_rate: learning_rate must be .*, got "
                       r"gradx\.schedules\.linear_schedule\(.*\), a callable;"):  # fmt: skip
        gradx.scale_by_learning_rate(gradx.schedules.linear_schedule(1.0, 0.0, 10))
    params = {"w": jnp.ones(2)}
    assert gradx.hyperparams(gradx.ema(0.9).init(params)) == {}  # a block's numbers: fixed
    schedule = optax.linear_schedule(1.0, 0.0, 10)
    for opt, want in ((gradx.sgd(schedule), [-1.0, -0.9, -0.8]),  # sgd: −γ_t·g
                      (gradx.adamw(schedule, b1=lambda count: 0.5), None)):  # fmt: skip
        state, steps = opt.init(params), []
        for _ in range(3):  # the optimizer evaluates the schedule: γ_t = 1 − t/10, t = 0, 1, 2
            updates, state = opt.update({"w": jnp.ones(2)}, state, params)
            steps.append(float(updates["w"][0]))
        assert gradx.hyperparams(state)["learning_rate"] == pytest.approx(0.8)
        if want is not None:
            np.testing.assert_allclose(steps, want, rtol=1e-6)


def test_blocks_validate_their_switches():
    with pytest.raises(ValueError, match=r"max_rms: max_of must be one of"):
        gradx.max_rms(0.999, max_of="vhat")
    with pytest.raises(ValueError, match=r"amsgrad: eps_hat=True .* got 'raw_v'"):
        gradx.amsgrad(0.1, eps_hat=True)
    with pytest.raises(ValueError, match=r"rmsprop: nesterov=True needs a momentum"):
        gradx.rmsprop(0.1, nesterov=True)
