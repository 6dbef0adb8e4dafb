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


def _moment(state, key, theta):
    return state.get(key, np.zeros_like(theta))


def adagrad(theta, state, grad_fn, t, learning_rate, eps=1e-8, initial_accumulator_value=0.0):
    # seed 001: theta_t = theta_{t-1} - alpha g_t / (sqrt(sum g^2) + eps)
    g = grad_fn(theta)
    G = state.get("G", np.full_like(theta, initial_accumulator_value)) + g * g
    return theta - learning_rate * g / (np.sqrt(G) + eps), {"G": G}


def rmsprop(theta, state, grad_fn, t, learning_rate, decay=0.9, eps=1e-8):
    # seeds 002/003: v = b v + (1 - b) g^2 ; theta -= alpha g / (sqrt(v) + eps)
    g = grad_fn(theta)
    v = decay * _moment(state, "v", theta) + (1 - decay) * g * g
    return theta - learning_rate * g / (np.sqrt(v) + eps), {"v": v}


def rmsprop_eps_in_sqrt(theta, state, grad_fn, t, learning_rate, decay=0.9, eps=1e-8):
    # seeds 000/001: theta -= gamma g / sqrt(s + eps)
    g = grad_fn(theta)
    v = decay * _moment(state, "v", theta) + (1 - decay) * g * g
    return theta - learning_rate * g / np.sqrt(v + eps), {"v": v}


def rmsprop_bias_corrected(theta, state, grad_fn, t, learning_rate, decay=0.9, eps=1e-8):
    # seed 001: v_hat = v / (1 - b^t) ; theta -= alpha g / (sqrt(v_hat) + eps)
    g = grad_fn(theta)
    v = decay * _moment(state, "v", theta) + (1 - decay) * g * g
    return theta - learning_rate * g / (np.sqrt(v / (1 - decay**t)) + eps), {"v": v}


def rmsprop_centered_momentum(
    theta, state, grad_fn, t, learning_rate, decay=0.9, eps=1e-8, momentum=0.5
):
    # Graves 2013 centered RMSProp, velocity b = mu b + lr g / den (optax / Keras form)
    g = grad_fn(theta)
    v = decay * _moment(state, "v", theta) + (1 - decay) * g * g
    a = decay * _moment(state, "a", theta) + (1 - decay) * g
    b = momentum * _moment(state, "b", theta) + learning_rate * g / (np.sqrt(v - a * a) + eps)
    return theta - b, {"v": v, "a": a, "b": b}


def adadelta(theta, state, grad_fn, t, learning_rate=1.0, rho=0.9, eps=1e-6):
    # Zeiler 2012 (seed 001 with the squared-update accumulator)
    g = grad_fn(theta)
    s = rho * _moment(state, "s", theta) + (1 - rho) * g * g
    d = np.sqrt(_moment(state, "D", theta) + eps) / np.sqrt(s + eps) * g
    D = rho * _moment(state, "D", theta) + (1 - rho) * d * d
    return theta - learning_rate * d, {"s": s, "D": D}


def adam(theta, state, grad_fn, t, learning_rate, b1=0.9, b2=0.999, eps=1e-8):
    # seed 000 / Kingma & Ba Algorithm 1
    g = grad_fn(theta)
    m = b1 * _moment(state, "m", theta) + (1 - b1) * g
    v = b2 * _moment(state, "v", theta) + (1 - b2) * g * g
    m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
    return theta - learning_rate * m_hat / (np.sqrt(v_hat) + eps), {"m": m, "v": v}


def adam_eps_hat(theta, state, grad_fn, t, learning_rate, b1=0.9, b2=0.999, eps=1e-8):
    # Kingma & Ba, end of Sec. 2: alpha_t = alpha sqrt(1 - b2^t) / (1 - b1^t), eps-hat on sqrt(v)
    g = grad_fn(theta)
    m = b1 * _moment(state, "m", theta) + (1 - b1) * g
    v = b2 * _moment(state, "v", theta) + (1 - b2) * g * g
    alpha = learning_rate * np.sqrt(1 - b2**t) / (1 - b1**t)
    return theta - alpha * m / (np.sqrt(v) + eps), {"m": m, "v": v}


def adamw(theta, state, grad_fn, t, learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2):
    # Loshchilov & Hutter: theta <- theta - lr (adam_step + wd theta)
    g = grad_fn(theta)
    m = b1 * _moment(state, "m", theta) + (1 - b1) * g
    v = b2 * _moment(state, "v", theta) + (1 - b2) * g * g
    step = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return theta - learning_rate * (step + weight_decay * theta), {"m": m, "v": v}


def amsgrad(theta, state, grad_fn, t, learning_rate, b1=0.9, b2=0.999, eps=1e-8):
    # Reddi et al. with torch's correction: v_max over raw v, divided by sqrt(1 - b2^t)
    g = grad_fn(theta)
    m = b1 * _moment(state, "m", theta) + (1 - b1) * g
    v = b2 * _moment(state, "v", theta) + (1 - b2) * g * g
    v_max = np.maximum(_moment(state, "v_max", theta), v)
    den = np.sqrt(v_max) / np.sqrt(1 - b2**t) + eps
    return theta - learning_rate * (m / (1 - b1**t)) / den, {"m": m, "v": v, "v_max": v_max}


def adamax(theta, state, grad_fn, t, learning_rate, b1=0.9, b2=0.999, eps=1e-8):
    # seed 001 / Kingma & Ba 7.1: u = max(b2 u, |g| + eps); theta -= alpha m_hat / u
    g = grad_fn(theta)
    m = b1 * _moment(state, "m", theta) + (1 - b1) * g
    u = np.maximum(b2 * _moment(state, "u", theta), np.abs(g) + eps)
    return theta - learning_rate / (1 - b1**t) * m / u, {"m": m, "u": u}


def nadam(
    theta, state, grad_fn, t, learning_rate, b1=0.9, b2=0.999, eps=1e-8, momentum_decay=0.004
):
    # Dozat 2016 with mu_t = b1 (1 - 0.5 * 0.96^(psi t)), as torch.optim.NAdam writes it
    g = grad_fn(theta)
    if momentum_decay is None:  # optax: no schedule
        mu = mu_next = b1
    else:
        mu = b1 * (1 - 0.5 * 0.96 ** (momentum_decay * t))
        mu_next = b1 * (1 - 0.5 * 0.96 ** (momentum_decay * (t + 1)))
    prod = state.get("prod", 1.0) * mu
    m = b1 * _moment(state, "m", theta) + (1 - b1) * g
    v = b2 * _moment(state, "v", theta) + (1 - b2) * g * g
    den = np.sqrt(v / (1 - b2**t)) + eps
    step = (1 - mu) / (1 - prod) * g / den + mu_next / (1 - prod * mu_next) * m / den
    return theta - learning_rate * step, {"m": m, "v": v, "prod": prod}
