"""fit on streamed data: bit for bit the in-memory fit, short-batch policy, epochs of a stream."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradx
from gradx import losses

N, D, B = 23, 3, 4  # 5 steps per epoch, 3 examples dropped
KEY = jax.random.key(0)
X = np.asarray(jax.random.normal(jax.random.key(1), (N, D), jnp.float64))
Y = X @ np.array([1.0, -2.0, 0.5]) + 0.1 * np.sin(np.arange(N))
DATA = {"x": X, "y": Y}
P0 = {"w": jnp.zeros(D), "b": jnp.zeros(())}


def loss_fn(params, batch):
    return losses.mse(batch["x"] @ params["w"] + params["b"], batch["y"])


def aux_loss(params, batch):
    pred = batch["x"] @ params["w"] + params["b"]
    return losses.mse(pred, batch["y"]), {"mean_pred": jnp.mean(pred)}


def eval_fn(params, data):
    return {"eval_mse": loss_fn(params, data)}


def in_memory_batches(epoch, key=KEY, last_short=True):
    """The minibatches the in-memory fit draws in ``epoch`` (its documented permutation)."""
    order = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), N))
    for i in range(N // B):
        yield {k: v[order[i * B : (i + 1) * B]] for k, v in DATA.items()}
    if last_short:  # the remainder, which the stream's short-batch policy drops too
        yield {k: v[order[(N // B) * B :]] for k, v in DATA.items()}


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def assert_trees_close(a, b):
    """Equal to float64 rounding: last-bit differences of a step, grown over 15 steps."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype
        np.testing.assert_allclose(x, y, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize(
    "make_optimizer",
    [lambda: gradx.momentum(0.05, momentum=0.9), lambda: gradx.adam(0.05)],
    ids=["momentum", "adam"],
)
@pytest.mark.parametrize("group", [1, 2, 16])
@pytest.mark.parametrize("flat", [False, None], ids=["per_leaf", "packed"])
def test_stream_equals_in_memory_bit_for_bit(make_optimizer, group, flat):
    # Leaf by leaf (flat=False) the two programs give the same bits. Packed (fit's default
    # for gradx optimizers), XLA fuses the gradient into the packing copy differently in the
    # two programs: a step may differ in its last bits (as flat and per-leaf do), and after
    # 15 steps momentum is within 36 ulps (5e-15 relative).
    common = dict(
        epochs=3, eval_fn=eval_fn, eval_data=DATA, has_aux=True, progress=False, flat=flat
    )
    memory = gradx.fit(aux_loss, P0, make_optimizer(), DATA, batch_size=B, key=KEY, **common)
    stream = gradx.fit(
        aux_loss,
        P0,
        make_optimizer(),
        in_memory_batches,  # a callable: data(epoch) -> the epoch's batches
        batch_size=None,
        key=None,
        steps_per_execution=group,
        **common,
    )
    assert set(stream.history) == {"loss", "mean_pred", "eval_mse"}
    same = assert_trees_equal if flat is False else assert_trees_close
    for name in memory.history:
        same(stream.history[name], memory.history[name])
    same(stream.params, memory.params)
    same(stream.opt_state, memory.opt_state)
    assert (stream.steps_per_epoch, stream.dropped_per_epoch) == (N // B, N % B)


def test_a_loader_is_reiterated_every_epoch_and_a_generator_feeds_one_epoch():
    class Loader:  # re-iterable, like a grain or torch DataLoader: batches of a fixed order
        def __iter__(self):
            return in_memory_batches(0, last_short=False)

    opt = gradx.sgd(0.05)
    loader = gradx.fit(loss_fn, P0, opt, Loader(), batch_size=B, epochs=2, key=None, progress=False)
    twice = gradx.fit(
        loss_fn,
        P0,
        opt,
        lambda e: in_memory_batches(0),
        batch_size=B,
        epochs=2,
        key=None,
        progress=False,
    )
    np.testing.assert_array_equal(loader.history["loss"], twice.history["loss"])
    assert loader.dropped_per_epoch == 0 and twice.dropped_per_epoch == N % B

    once = gradx.fit(
        loss_fn, P0, opt, in_memory_batches(0), batch_size=B, epochs=1, key=None, progress=False
    )
    np.testing.assert_array_equal(once.history["loss"], twice.history["loss"][:1])
    with pytest.raises(
        ValueError, match=r"fit: data is a one-shot iterator .* got epochs to run = 2"
    ):
        gradx.fit(
            loss_fn, P0, opt, in_memory_batches(0), batch_size=B, epochs=2, key=None, progress=False
        )


def test_steps_per_epoch_cuts_an_endless_generator_into_epochs():
    def endless():
        epoch = 0
        while True:
            yield from in_memory_batches(epoch, last_short=False)
            epoch += 1

    memory = gradx.fit(
        loss_fn, P0, gradx.sgd(0.05), DATA, batch_size=B, epochs=3, key=KEY, progress=False
    )
    stream = gradx.fit(
        loss_fn, P0, gradx.sgd(0.05), endless(), batch_size=B, epochs=3, key=None,
        steps_per_epoch=N // B, steps_per_execution=3, progress=False,
    )  # fmt: skip
    np.testing.assert_array_equal(stream.history["loss"], memory.history["loss"])
    assert_trees_equal(stream.params, memory.params)
    short = iter((list(in_memory_batches(0, last_short=False)) * 3)[:12])  # 12 for 3 x 5
    with pytest.raises(
        ValueError,
        match=r"fit: data must yield steps_per_epoch=5 full batches each epoch, got 2 in epoch 2",
    ):
        gradx.fit(
            loss_fn,
            P0,
            gradx.sgd(0.05),
            short,
            batch_size=B,
            epochs=3,
            key=None,
            steps_per_epoch=5,
            progress=False,
        )


def test_group_programs_compile_once_and_a_short_last_group_splits_in_powers_of_two():
    traces = []

    def counted(params, batch):
        traces.append(batch["x"].shape)
        return loss_fn(params, batch)

    def batches(epoch):  # 7 full batches: a group of 4, then 3 = 2 + 1
        for i in range(7):
            yield {k: v[i : i + 2] for k, v in DATA.items()}

    result = gradx.fit(
        counted, P0, gradx.sgd(0.05), batches, batch_size=2, epochs=3, key=None,
        steps_per_execution=4, progress=False,
    )  # fmt: skip
    assert result.steps_per_epoch == 7
    assert len(traces) == 3  # scan lengths 4, 2 and 1, each traced once for all epochs


@pytest.mark.parametrize(
    "batches, match",
    [
        (
            [{"x": X[:4], "y": Y[:4]}, {"x": X[:4, :2], "y": Y[:4]}],
            r"fit: data must yield batches of one structure, shape and dtype .* in batch 1 of epoch 0",
        ),
        (
            [{"x": X[:4], "y": Y[:3]}],
            r"fit: data must yield arrays with one leading batch axis of the same length",
        ),
        (
            [{"x": X[:5], "y": Y[:5]}],
            r"fit: data must yield batches of batch_size=4 examples, got 5 in batch 0",
        ),
        (
            [{"x": X[:2], "y": Y[:2]}],
            r"fit: data must yield at least one full batch of 4 examples each epoch, got none in epoch 0 \(2 examples",
        ),
    ],
)
def test_stream_rejects_bad_batches(batches, match):
    with pytest.raises(ValueError, match=match):
        gradx.fit(
            loss_fn,
            P0,
            gradx.sgd(0.1),
            lambda e: batches,
            batch_size=B,
            epochs=1,
            key=None,
            progress=False,
        )


def test_stream_only_arguments_are_checked():
    with pytest.raises(
        ValueError, match=r"fit: eval_data must be given with eval_fn when data is a stream"
    ):
        gradx.fit(
            loss_fn,
            P0,
            gradx.sgd(0.1),
            in_memory_batches,
            batch_size=B,
            epochs=1,
            key=None,
            eval_fn=eval_fn,
            progress=False,
        )
    with pytest.raises(ValueError, match=r"fit: steps_per_epoch is for streamed data"):
        gradx.fit(
            loss_fn,
            P0,
            gradx.sgd(0.1),
            DATA,
            batch_size=B,
            epochs=1,
            key=KEY,
            steps_per_epoch=3,
            progress=False,
        )


def test_a_generator_function_without_the_epoch_is_refused_naming_the_fix():
    def gen():
        yield from in_memory_batches(0)

    kw = dict(batch_size=B, epochs=1, key=KEY, progress=False)
    with pytest.raises(
        TypeError,
        match=r"fit: a callable data must take the epoch: data\(epoch\) -> iterable of batches; "
        r"got a function of no arguments; pass data=gen\(\) for one pass or "
        r"data=lambda epoch: gen\(\)",
    ):
        gradx.fit(loss_fn, P0, gradx.sgd(0.05), gen, **kw)
    # Both fixes train on gen's batches.
    once = gradx.fit(loss_fn, P0, gradx.sgd(0.05), gen(), **kw)
    again = gradx.fit(loss_fn, P0, gradx.sgd(0.05), lambda epoch: gen(), **kw)
    np.testing.assert_array_equal(once.history["loss"], again.history["loss"])
    assert once.steps_per_epoch == N // B


@pytest.mark.parametrize("group", [2, 4])
def test_a_loader_that_refills_one_buffer_per_batch_trains_on_every_batch(group):
    # A Keras/torch-style loader: one host buffer, refilled before each batch is yielded
    # (safe in a loop that consumes a batch before asking for the next). fit must copy each
    # batch as it reads it, not keep the buffer until its group is full. "y" comes as a
    # jax.Array (immutable: kept as it is); group 4 of 5 steps also cuts a short last group.
    def refilled(epoch):
        x = np.empty((B, D))
        for batch in in_memory_batches(epoch, last_short=False):
            x[:] = batch["x"]
            yield {"x": x, "y": jnp.asarray(batch["y"])}

    kw = dict(epochs=2, has_aux=True, progress=False, flat=False)
    memory = gradx.fit(aux_loss, P0, gradx.adam(0.05), DATA, batch_size=B, key=KEY, **kw)
    stream = gradx.fit(
        aux_loss, P0, gradx.adam(0.05), refilled, batch_size=None, key=None,
        steps_per_execution=group, **kw,
    )  # fmt: skip
    for name in memory.history:
        assert_trees_equal(stream.history[name], memory.history[name])
    assert_trees_equal(stream.params, memory.params)
