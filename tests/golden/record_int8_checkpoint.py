"""Records an int8 checkpoint and a pickled int8 state in the format gradx used before its
int8 moments had 8-bit floating-point maps and limits (bitsandbytes' dynamic maps and
per-block absmax ``scales``, up to commit eaad44a), for ``tests/test_checkpoint.py``.

Run it with that gradx on the path, from this folder::

    git worktree add /tmp/gradx-eaad44a eaad44a
    PYTHONPATH=/tmp/gradx-eaad44a python record_int8_checkpoint.py

It writes ``int8_checkpoint_eaad44a/`` (an orbax checkpoint of one epoch of ``gradx.fit``)
and ``int8_state_eaad44a.pickle``. The current gradx must refuse both, saying why, rather
than read the old codes with its own maps.
"""

import pathlib
import pickle
import shutil

import jax
import jax.numpy as jnp

import gradx
from gradx import losses

HERE = pathlib.Path(__file__).resolve().parent
X = jax.random.normal(jax.random.key(1), (8, 256), jnp.float32)
DATA = {"x": X, "y": jnp.tanh(X[:, 0])}
P0 = {"w": jnp.zeros(256, jnp.float32)}


def loss_fn(params, batch):
    return losses.mse(jnp.tanh(batch["x"] @ params["w"]), batch["y"])


def optimizer():
    return gradx.adam(0.05, state_dtype="int8")


if __name__ == "__main__":
    out = HERE / "int8_checkpoint_eaad44a"
    shutil.rmtree(out, ignore_errors=True)
    result = gradx.fit(
        loss_fn, P0, optimizer(), DATA, batch_size=4, epochs=1, key=jax.random.key(0),
        checkpoint_dir=str(out), progress=False,
    )  # fmt: skip
    (out / ".gradx.lock").unlink(missing_ok=True)
    with open(HERE / "int8_state_eaad44a.pickle", "wb") as f:
        pickle.dump(result.opt_state, f)
    print(type(result.opt_state.inner_state[0].by.nu["w"]).__name__)
