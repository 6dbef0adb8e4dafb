"""The fit that tests/test_checkpoint.py interrupts and resumes (shared with its worker)."""

import jax
import jax.numpy as jnp

import gradx
from gradx import losses

N, D = 19, 3
X = jax.random.normal(jax.random.key(1), (N, D), jnp.float64)
DATA = {"x": X, "y": jnp.tanh(X @ jnp.array([1.0, -2.0, 0.5]))}
P0 = {"w": jnp.zeros(D), "b": jnp.zeros(())}
EPOCHS = 6


def loss_fn(params, batch):
    return losses.mse(jnp.tanh(batch["x"] @ params["w"] + params["b"]), batch["y"])


def optimizer():
    """Lookahead over Adam: slow weights, a phase counter and an inner gradx state."""
    return gradx.lookahead(gradx.adam(0.05), sync_period=4, alpha=0.5)


OPT = optimizer()  # one object: its compiled epoch is reused by every run


def run(directory=None, epochs=EPOCHS, callbacks=None, resume=False, opt=None, **kwargs):
    return gradx.fit(
        loss_fn,
        P0,
        OPT if opt is None else opt,
        DATA,
        batch_size=4,
        epochs=epochs,
        key=jax.random.key(0),
        callbacks=callbacks,
        checkpoint_dir=directory,
        checkpoint_every=1,
        resume=resume,
        progress=False,
        **kwargs,
    )
