"""The problem the two-process test trains, shared by its worker and its single-process check."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradx

FIT = {"batch_size": 16, "epochs": 3, "key": jax.random.key(5), "progress": False}


def problem():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    y = (x @ rng.normal(size=(6, 4)) > 0).astype(np.float32)
    params = {
        "w1": jnp.asarray(rng.normal(size=(6, 16)) * 0.3, jnp.float32),
        "b1": jnp.zeros(16, jnp.float32),
        "w2": jnp.asarray(rng.normal(size=(16, 4)) * 0.3, jnp.float32),
    }
    return params, (x, y)


def loss_fn(params, batch):
    x, y = batch
    h = jnp.tanh(x @ params["w1"] + params["b1"][None, :])
    return jnp.mean(optax.sigmoid_binary_cross_entropy(h @ params["w2"], y))


def optimizer():
    return gradx.adam(0.02)
