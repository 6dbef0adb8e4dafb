"""NumPy transcription of Schedule-Free SGD, written from the paper, not from the code.

Defazio et al., "The Road Less Scheduled" (NeurIPS 2024), Algorithm 1 with SGD's step in
place of Adam's, and the averaging weights of its reference code (w_t = γ_max,t^r; the
paper's c_{t+1} = γ_t²/Σγ_i² is r = 2 with a non-decreasing γ). Same contract as
``reference.py``: ``step(theta, state, grad_fn, t, **hp) -> (theta, state)`` on a flat
vector, ``t = 1, 2, ...``, ``state`` a dict that starts empty; ``theta`` is y_t.
"""


def schedule_free_sgd(
    theta,
    state,
    grad_fn,
    t,
    learning_rate,
    b1=0.9,
    weight_decay=0.0,
    weight_lr_power=2.0,
    warmup_steps=None,
    lagged=False,
):
    # x₁ = z₁ = y₁. Each step: g = ∇f(y_t) + λ·y_t; z_{t+1} = z_t − γ_t·g;
    # c_{t+1} = w_t / Σ_{i≤t} w_i; x_{t+1} = (1 − c)·x_t + c·z_{t+1};
    # y_{t+1} = (1 − β)·z_{t+1} + β·x_{t+1}. γ_t = γ·min(1, t/T_warmup).
    # ``lagged``: z's step takes γ_{t−1} (optax's, and gradx's, warmup), the weights γ_t.
    def gamma(s):
        return learning_rate * (min(1.0, s / warmup_steps) if warmup_steps else 1.0)

    if not state:
        state = {"z": theta.copy(), "x": theta.copy(), "lr_max": 0.0, "weight_sum": 0.0}
    g = grad_fn(theta) + weight_decay * theta
    z = state["z"] - (gamma(t - 1) if lagged else gamma(t)) * g
    lr_max = max(state["lr_max"], gamma(t))
    w = lr_max**weight_lr_power
    weight_sum = state["weight_sum"] + w
    c = w / weight_sum if weight_sum > 0 else 0.0
    x = (1 - c) * state["x"] + c * z
    y = (1 - b1) * z + b1 * x
    return y, {"z": z, "x": x, "lr_max": lr_max, "weight_sum": weight_sum, "c": c}
