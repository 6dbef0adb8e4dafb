"""What ``gradx.sweep`` promises beyond its numbers: the progress bar shows one point (the
best by training loss) with that point's own metrics, and a point equals its own ``fit`` up
to float32 rounding, which holds tightly while training is stable (small learning rates)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradx
from gradx import losses
from gradx._training import sweep as train_module

N, D = 24, 3
X = jax.random.normal(jax.random.key(1), (N, D), jnp.float64)
DATA = {"x": X, "y": X @ jnp.array([1.0, -2.0, 0.5])}
P0 = {"w": jnp.zeros(D), "b": jnp.zeros(())}


def loss_fn(params, batch):
    return losses.mse(batch["x"] @ params["w"] + params["b"], batch["y"])


def eval_fn(params, data):
    mse = loss_fn(params, data)
    # "fit" grows as the model gets better: higher is better, unlike a loss.
    return {"eval_mse": mse, "fit": 1.0 / (1.0 + mse)}


class _Bar:
    """Stands in for tqdm and records every postfix."""

    def __init__(self):
        self.postfixes = []

    def set_postfix(self, postfix, refresh=True):
        self.postfixes.append(dict(postfix))

    def update(self, n=1):
        pass

    def close(self):
        pass


def test_progress_bar_shows_the_best_points_own_metrics(monkeypatch):
    bar = _Bar()
    monkeypatch.setattr(train_module, "progress_bar", lambda enabled, total, desc: bar)
    # 0.2 learns fastest, 0.002 slowest, 0.6 diverges (GD on this data is stable below ~0.4):
    # its loss becomes inf or NaN and must never be shown as the best.
    lrs = jnp.array([0.002, 0.6, 0.2])
    result = gradx.sweep(
        loss_fn,
        P0,
        gradx.sgd(0.1),
        DATA,
        {"learning_rate": lrs},
        batch_size=None,
        epochs=3,
        key=None,
        chunk_size=2,  # two chunks, the second padded: the index shown is the grid's
        eval_fn=eval_fn,
        progress=True,
    )
    assert len(bar.postfixes) == 2 * 3
    for chunk, first in enumerate([0, 2]):
        for epoch in range(3):
            shown = bar.postfixes[chunk * 3 + epoch]
            points = range(first, min(first + 2, 3))
            loss = {i: result.history["loss"][i, epoch] for i in points}
            best = min((i for i in points if np.isfinite(loss[i])), key=loss.get)
            assert shown == {
                "point": str(best),
                "loss": f"{loss[best]:.4g}",
                "eval_mse": f"{result.history['eval_mse'][best, epoch]:.4g}",
                "fit": f"{result.history['fit'][best, epoch]:.4g}",
            }
    # The first chunk holds the slow point and the diverging one: the bar shows the slow
    # point's "fit", its best, where the smallest "fit" in the chunk is the diverging one's.
    last = bar.postfixes[2]
    assert last["point"] == "0"
    assert float(last["fit"]) > np.nanmin(result.history["fit"][:2, 2])


def _mlp_loss(params, batch):
    x, y = batch
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"][None])
    return losses.categorical_cross_entropy(x @ params[-1]["w"] + params[-1]["b"][None], y)


@pytest.mark.parametrize("learning_rate", [1e-3, 3e-3])
def test_sweep_point_equals_its_fit_at_a_small_learning_rate(learning_rate):
    # A float32 ReLU network like the digits one (16-8-4), Adam, 3 epochs of batch 16: a
    # stable run, where the batched program's rounding stays at float32 level. Tolerance:
    # 2e-5 relative on the loss history and the params (float32 eps is 1.2e-7; 3 epochs of 8
    # steps accumulate a few hundred roundings).
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 16)).astype(np.float32)
    y = rng.integers(0, 4, 128).astype(np.int32)
    keys = jax.random.split(jax.random.key(0), 2)
    params = [
        {"w": jax.random.normal(keys[0], (16, 8), jnp.float32) * 0.35, "b": jnp.zeros(8)},
        {"w": jax.random.normal(keys[1], (8, 4), jnp.float32) * 0.5, "b": jnp.zeros(4)},
    ]
    params = jax.tree.map(lambda p: p.astype(jnp.float32), params)
    common = dict(batch_size=16, epochs=3, key=jax.random.key(2), progress=False)
    swept = gradx.sweep(
        _mlp_loss,
        params,
        gradx.adam(1e-3),
        (x, y),
        {"learning_rate": jnp.array([learning_rate, 10 * learning_rate], jnp.float32)},
        **common,
    )
    alone = gradx.fit(_mlp_loss, params, gradx.adam(learning_rate), (x, y), **common)
    point = swept.point(0)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(point.params))  # a float32 run
    assert point.history["loss"].dtype == alone.history["loss"].dtype == np.float64  # as fit's
    np.testing.assert_allclose(point.history["loss"], alone.history["loss"], rtol=2e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
        point.params,
        alone.params,
    )
