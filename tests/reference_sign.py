"""NumPy transcriptions of Rprop, written from the formulas, not the code.

Same contract as ``reference.py``: ``step(theta, state, grad_fn, t, **hp) -> (theta, state)``
on a flat vector, ``t = 1, 2, ...``, ``state`` a dict that starts empty.
"""

import numpy as np


def rprop(
    theta,
    state,
    grad_fn,
    t,
    learning_rate,
    eta_plus=1.2,
    eta_minus=0.6,
    min_step=1e-6,
    max_step=50.0,
):
    # seed 004: w_i <- w_i - alpha_i sign(g_i);
    # alpha_i <- alpha_i * 1.2 if sign(g_i * g_i_prev) > 0 else alpha_i * 0.6 (<= 0).
    # t = 1 has no previous gradient: alpha_i = alpha_0 (clipped), no adaptation.
    g = grad_fn(theta)
    if t == 1:
        alpha = np.clip(np.full_like(theta, learning_rate), min_step, max_step)
    else:
        same = np.sign(g) * np.sign(state["g"]) > 0
        alpha = np.clip(state["alpha"] * np.where(same, eta_plus, eta_minus), min_step, max_step)
    return theta - alpha * np.sign(g), {"alpha": alpha, "g": g}


def irprop_minus(
    theta,
    state,
    grad_fn,
    t,
    learning_rate,
    eta_plus=1.2,
    eta_minus=0.5,
    min_step=1e-6,
    max_step=50.0,
):
    # Igel & Hüsken 2000, iRprop-, as torch.optim.Rprop: step_0 = lr, prev_0 = 0;
    # factor eta+ / eta- / 1 for s > 0 / s < 0 / s = 0, clipped every step; g := 0 where s < 0.
    g = grad_fn(theta)
    prev = state.get("g", np.zeros_like(theta))
    alpha = state.get("alpha", np.full_like(theta, learning_rate))
    s = np.sign(g * prev)
    factor = np.where(s > 0, eta_plus, np.where(s < 0, eta_minus, 1.0))
    alpha = np.clip(alpha * factor, min_step, max_step)
    g = np.where(s < 0, 0.0, g)
    return theta - alpha * np.sign(g), {"alpha": alpha, "g": g}
