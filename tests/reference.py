"""NumPy transcriptions of the seeds' update rules, written from the formulas, not the code.

Each rule is ``step(theta, state, grad_fn, t, **hp) -> (theta, state)`` on a flat vector,
``t = 1, 2, ...``; ``state`` is a dict that starts empty. ``observe(theta, state, **hp)`` is the
point the optimizer's params should equal (theta itself, except for Nesterov's look-ahead).
"""

import numpy as np


def sgd(theta, state, grad_fn, t, learning_rate):
    return theta - learning_rate * grad_fn(theta), state


def momentum(theta, state, grad_fn, t, learning_rate, momentum=0.9):
    # seed 000: v_t = a v_{t-1} - gamma g ; theta_{t+1} = theta_t + v_t
    v = state.get("v", np.zeros_like(theta))
    v = momentum * v - learning_rate * grad_fn(theta)
    return theta + v, {"v": v}


def nesterov(theta, state, grad_fn, t, learning_rate, momentum=0.9):
    # seed 004: v <- mu v - gamma grad L(theta + mu v); theta <- theta + v
    v = state.get("v", np.zeros_like(theta))
    v = momentum * v - learning_rate * grad_fn(theta + momentum * v)
    return theta + v, {"v": v}


def nesterov_observe(theta, state, learning_rate, momentum=0.9):
    return theta + momentum * state.get("v", np.zeros_like(theta))


def ema_momentum(theta, state, grad_fn, t, learning_rate, beta=0.9, bias_correction=False):
    # seeds 001/002: m <- beta m + (1 - beta) g ; theta <- theta - gamma m [/(1 - beta^t)]
    m = state.get("m", np.zeros_like(theta))
    m = beta * m + (1 - beta) * grad_fn(theta)
    step = m / (1 - beta**t) if bias_correction else m
    return theta - learning_rate * step, {"m": m}


def normalized_sgd(theta, state, grad_fn, t, learning_rate):
    # seed 004: w <- w - alpha grad / ||grad||
    g = grad_fn(theta)
    norm = np.sqrt(np.sum(g * g))
    return theta - (learning_rate * g / norm if norm > 0 else 0 * g), state
