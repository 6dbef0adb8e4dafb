"""The README's Python examples run as written, in order, on a tiny problem."""

import pathlib
import re

import jax.numpy as jnp
import numpy as np

README = pathlib.Path(__file__).parent.parent / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 4
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(256, 3)), jnp.float32)
    y = x @ jnp.array([1.0, -2.0, 0.5], jnp.float32)

    def loss_fn(params, batch):
        return jnp.mean((batch["x"] @ params["w"] + params["b"] - batch["y"]) ** 2)

    namespace = {
        "params": {"w": jnp.zeros(3, jnp.float32), "b": jnp.zeros((), jnp.float32)},
        "loss_fn": loss_fn,
        "batch": {"x": x[:16], "y": y[:16]},
        "data": {"x": x, "y": y},
    }
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["params_k"]["w"].shape == (4, 3)
    assert np.isfinite(namespace["result"].history["loss"]).all()
    assert namespace["result"].history["loss"][-1] < namespace["result"].history["loss"][0]
