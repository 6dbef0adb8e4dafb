"""fit's gradient accumulation (``accumulate=A``) and weight averaging (``ema=d``).

Accumulation is checked against the big batch it stands for (``batch_size=A·B`` on the same
key), the average against a NumPy transcription of its formula over the params of each step.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradx
from gradx._training import accumulate as _accumulate

RNG = np.random.default_rng(0)
X = RNG.normal(size=(44, 3))
Y = X @ RNG.normal(size=(3, 2)) + 0.1 * RNG.normal(size=(44, 2))
P0 = {"b": jnp.zeros(2), "w": jnp.asarray(0.1 * RNG.normal(size=(3, 2)))}
KEY = jax.random.key(7)


def loss_fn(params, batch):  # a mean over the batch, as the big-batch equality requires
    x, y = batch
    return jnp.mean((x @ params["w"] + params["b"][None, :] - y) ** 2)


def leaves_close(a, b, rtol=1e-12, atol=1e-14):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def test_accumulate_equals_the_big_batch_for_every_optimizer():
    # Every optimizer of the table at once, each on its own copy of the model (one program
    # per run instead of two per optimizer): B=4 × A=4 against batch_size=16.
    names = list(gradx.OPTIMIZERS)
    params = {n: P0["w"] for n in names}

    def loss(params, batch):
        x, y = batch
        return sum(jnp.mean((x @ w - y) ** 2) for w in params.values())

    def opt():
        return optax.multi_transform(
            {n: gradx.OPTIMIZERS[n](0.05) for n in names}, {n: n for n in names}
        )

    kw = {"epochs": 1, "key": KEY, "progress": False}
    with jax.numpy_dtype_promotion("standard"):  # optax mixes dtypes
        big = gradx.fit(loss, params, opt(), (X, Y), batch_size=16, **kw)
        acc = gradx.fit(loss, params, opt(), (X, Y), batch_size=4, accumulate=4, **kw)
    # 44 examples: 11 minibatches of 4 fill 2 windows; 3 minibatches and 0 left over are
    # dropped, the 12 examples batch_size=16 drops
    assert (acc.steps_per_epoch, acc.dropped_per_epoch) == (2, 12)
    assert (big.steps_per_epoch, big.dropped_per_epoch) == (2, 12)
    np.testing.assert_allclose(acc.history["loss"], big.history["loss"], rtol=1e-13)
    for n in names:
        leaves_close(acc.params[n], big.params[n])
        assert not np.allclose(acc.params[n], P0["w"]), n  # it trained
    leaves_close(acc.opt_state, big.opt_state)  # one step per window: the counts agree


def test_one_gradient_sum_is_carried_across_the_window():
    window = (jnp.zeros((4, 3, 3)), jnp.zeros((4, 3, 2)))
    loss = _accumulate.value_and_grad(lambda p, b: (loss_fn(p, b), {}), 4)
    jaxpr = jax.make_jaxpr(loss)(P0, window).jaxpr
    (scan,) = [e for e in jaxpr.eqns if e.primitive.name == "scan"]
    first = scan.params["num_consts"]
    carry = scan.invars[first : first + scan.params["num_carry"]]
    # the loss, and one buffer per param: the gradient sum
    assert sorted(v.aval.shape for v in carry) == [(), (2,), (3, 2)]


def test_ema_is_the_hand_average_of_each_steps_params_and_eval_on_ema_reads_it():
    # N = A·B: each epoch is one window, one optimizer step; a callback records the params
    # after it, and NumPy averages them: ema_1 = θ_1, ema_t = d ema_{t−1} + (1−d) θ_t.
    d, seen = 0.8, []

    def record(epoch, logs, params, opt_state):
        seen.append(jax.tree.map(np.asarray, params))

    def evaluate(params, data):
        return {"w_sum": jnp.sum(params["w"]), "b0": params["b"][0]}

    x, y = X[:40], Y[:40]
    kw = {"batch_size": 10, "accumulate": 4, "epochs": 6, "key": KEY, "progress": False}
    got = gradx.fit(
        loss_fn, P0, gradx.adam(0.1), (x, y), ema=d, eval_fn=evaluate, eval_on="ema",
        callbacks=[record], **kw,
    )  # fmt: skip
    assert got.steps_per_epoch == 1 and len(seen) == 6
    ema, sums = None, []
    for theta in seen:
        ema = theta if ema is None else jax.tree.map(lambda e, t: d * e + (1 - d) * t, ema, theta)
        sums.append((ema["w"].sum(), ema["b"][0]))
    leaves_close(got.ema_params, ema)
    np.testing.assert_allclose(got.history["w_sum"], [s[0] for s in sums], rtol=1e-12)
    np.testing.assert_allclose(got.history["b0"], [s[1] for s in sums], rtol=1e-12)
    leaves_close(got.params, seen[-1], rtol=0, atol=0)  # the params are the optimizer's own
    assert got.ema_params["w"].dtype == P0["w"].dtype
    # eval_on="params" (the default) evaluates the params; without ema there is no average
    plain = gradx.fit(loss_fn, P0, gradx.adam(0.1), (x, y), eval_fn=evaluate, **kw)
    np.testing.assert_allclose(plain.history["w_sum"], [t["w"].sum() for t in seen], rtol=1e-12)
    assert plain.ema_params is None
    leaves_close(plain.params, got.params, rtol=0, atol=0)  # the average changes no step


def test_a_window_with_a_non_finite_micro_batch_is_skipped_whole():
    # One poisoned example: the window holding it is skipped, as the big batch holding it
    # is; its other micro-batch is not applied, and the average does not move.
    # With has_aux (averaged over the window) and diagnostics (of the last window's mean
    # gradient) on.
    x, y = X[:32].copy(), Y[:32].copy()
    y[5] = np.inf

    def loss_aux(params, batch):
        r = batch[0] @ params["w"] + params["b"][None, :] - batch[1]
        return jnp.mean(r**2), {"mae": jnp.mean(jnp.abs(r))}

    kw = {
        "epochs": 3, "key": KEY, "progress": False, "skip_nonfinite": True, "ema": 0.5,
        "diagnostics": True, "has_aux": True,
    }  # fmt: skip
    big = gradx.fit(loss_aux, P0, gradx.momentum(0.05), (x, y), batch_size=8, **kw)
    acc = gradx.fit(loss_aux, P0, gradx.momentum(0.05), (x, y), batch_size=4, accumulate=2, **kw)
    np.testing.assert_array_equal(acc.history["skipped"], [1, 1, 1])
    np.testing.assert_array_equal(big.history["skipped"], [1, 1, 1])
    for name in ("loss", "mae", "grad_norm", "update_norm", "alpha_q50"):
        np.testing.assert_allclose(acc.history[name], big.history[name], rtol=1e-12, err_msg=name)
    leaves_close(acc.params, big.params)
    leaves_close(acc.ema_params, big.ema_params)
    assert np.all(np.isfinite(acc.params["w"]))


def test_a_stream_accumulates_as_the_in_memory_path_and_drops_a_partial_window():
    b, a = 4, 3

    def batches(epoch):  # the in-memory path's minibatches, and a short last batch
        order = np.asarray(jax.random.permutation(jax.random.fold_in(KEY, epoch), len(X)))
        for i in range(0, len(X), b):
            yield (X[order[i : i + b]], Y[order[i : i + b]])

    def evaluate(params, data):
        return loss_fn(params, data)

    kw = {"epochs": 2, "progress": False, "ema": 0.9, "eval_fn": evaluate, "eval_on": "ema"}
    opt = gradx.adam(0.05)
    memory = gradx.fit(loss_fn, P0, opt, (X, Y), batch_size=b, accumulate=a, key=KEY, **kw)
    stream = gradx.fit(
        loss_fn, P0, opt, batches, batch_size=b, accumulate=a, key=None, eval_data=(X, Y),
        steps_per_execution=2, **kw,
    )  # fmt: skip
    # 11 batches of 4: 3 windows of 3; the 2 batches left are dropped with the 8 examples
    assert (memory.steps_per_epoch, memory.dropped_per_epoch) == (3, 8)
    assert (stream.steps_per_epoch, stream.dropped_per_epoch) == (3, 8)
    for name in ("loss", "eval"):
        np.testing.assert_allclose(stream.history[name], memory.history[name], rtol=1e-13)
    leaves_close(stream.params, memory.params)
    leaves_close(stream.ema_params, memory.ema_params)
    # steps_per_epoch counts windows: an endless iterator gives A batches per step
    drawn = []

    def endless():
        while True:
            drawn.append(1)
            yield (X[:b], Y[:b])

    cut = gradx.fit(
        loss_fn, P0, opt, endless(), batch_size=b, accumulate=a, key=None, eval_data=(X, Y),
        steps_per_epoch=2, steps_per_execution=2, **kw,
    )  # fmt: skip
    assert cut.steps_per_epoch == 2 and len(drawn) == 2 * 2 * a
    with pytest.raises(ValueError, match=r"fit: data must yield at least accumulate=3 full"):
        gradx.fit(
            loss_fn, P0, opt, lambda e: iter([(X[:b], Y[:b])] * 2), batch_size=None,
            accumulate=a, key=None, epochs=1, progress=False,
        )  # fmt: skip


class Interrupt(Exception):
    pass


def test_resume_with_accumulate_and_ema_equals_the_uninterrupted_run(tmp_path):
    def interrupt(epoch, logs, params, opt_state):
        if epoch == 2:
            raise Interrupt

    def fit(directory=None, ema=0.9, accumulate=2, **kwargs):
        return gradx.fit(
            loss_fn, P0, gradx.adam(0.05), (X, Y), batch_size=4, accumulate=accumulate, ema=ema,
            epochs=4, key=KEY, progress=False, checkpoint_dir=directory, **kwargs,
        )  # fmt: skip

    whole = fit()
    with pytest.raises(Interrupt):
        fit(tmp_path, callbacks=[interrupt])
    resumed = fit(tmp_path, resume=True)
    for name in whole.history:
        np.testing.assert_array_equal(resumed.history[name], whole.history[name])
    for got, want in ((resumed.params, whole.params), (resumed.ema_params, whole.ema_params)):
        leaves_close(got, want, rtol=0, atol=0)
    leaves_close(resumed.opt_state, whole.opt_state, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"another run: ema was 0\.9 there, 0\.99 now"):
        fit(tmp_path, resume=True, ema=0.99)
    with pytest.raises(ValueError, match=r"another run: ema was 0\.9 there, absent now"):
        fit(tmp_path, resume=True, ema=None)
    with pytest.raises(ValueError, match="another run: accumulate was 2 there, 3 now"):
        fit(tmp_path, resume=True, accumulate=3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"accumulate": 0}, r"fit: accumulate must be an integer >= 1 .*got 0"),
        ({"accumulate": 2.0}, r"fit: accumulate must be an integer >= 1 .*got 2\.0"),
        ({"accumulate": True}, r"fit: accumulate must be an integer >= 1 .*got True"),
        ({"accumulate": 2, "batch_size": None}, r"fit: accumulate=2 needs a batch_size"),
        (
            {"accumulate": 12},
            r"fit: batch_size × accumulate must be at most .* examples, 44.*4 × 12",
        ),
        ({"ema": 1.5}, r"fit: ema must be None \(no average\) or the decay d in \[0, 1\].*1\.5"),
        ({"ema": True}, r"fit: ema must be None .*got True"),
        ({"ema": float("nan")}, r"fit: ema must be None .*got nan"),
        ({"ema": "0.9"}, r"fit: ema must be None .*got '0\.9'"),
        ({"eval_on": "average"}, r"fit: eval_on must be one of \('params', 'ema'\)"),
        ({"eval_on": "ema"}, r"fit: eval_on='ema' .* needs ema="),
        ({"eval_on": "ema", "ema": 0.9, "eval_fn": None}, r"fit: eval_on='ema' needs an eval_fn"),
    ],
)
def test_bad_accumulate_ema_and_eval_on_are_clear_errors(kwargs, match):
    kw = {"batch_size": 4, "epochs": 1, "key": KEY, "progress": False, "eval_fn": loss_fn}
    with pytest.raises(ValueError, match=match):
        gradx.fit(loss_fn, P0, gradx.sgd(0.1), (X, Y), **{**kw, **kwargs})


def test_a_bfloat16_average_moves_and_is_handed_out_in_bfloat16():
    # θ_t = 3 − 1.5·0.5^(t−1) (sgd on (w − 3)², one full-batch step per epoch). With d = 0.999
    # an increment (1 − d)(θ_t − ema) ≈ 0.0015 is under half a bfloat16 ulp of the average
    # (0.0039 at 1.5): rounded back to bfloat16 every step it would stay θ_1 = 1.5. NumPy
    # averages the recorded params in float32.
    d, seen, dtypes = 0.999, [], []

    def loss(params, batch):
        return jnp.mean((params["w"].astype(jnp.float32) - 3.0) ** 2)

    def record(epoch, logs, params, opt_state):
        seen.append(np.asarray(params["w"], np.float32))

    def evaluate(params, data):
        dtypes.append(params["w"].dtype)
        return {"w0": params["w"][0].astype(jnp.float32)}

    p0 = {"w": jnp.zeros(2, jnp.bfloat16)}
    got = gradx.fit(
        loss, p0, gradx.sgd(0.5), (X,), batch_size=None, epochs=60, key=KEY, progress=False,
        ema=d, eval_fn=evaluate, eval_on="ema", callbacks=[record],
    )  # fmt: skip
    ema = None
    for theta in seen:
        ema = theta if ema is None else np.float32(d) * ema + np.float32(1 - d) * theta
    assert seen[0][0] == 1.5 and ema[0] > 1.55  # it moved
    # the eval params: the float32 average rounded to bfloat16 (within half an ulp)
    assert dtypes == [jnp.bfloat16]
    np.testing.assert_allclose(got.history["w0"][-1], ema[0], rtol=2**-9)
    np.testing.assert_allclose(np.asarray(got.ema_params["w"], np.float32), ema, rtol=2**-9)
    assert got.ema_params["w"].dtype == jnp.bfloat16
