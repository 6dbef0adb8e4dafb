"""gradx.flat: the many-leaf path equals the per-leaf path across the optimizer table."""

from __future__ import annotations

import pickle
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_optimizers import CASES

import gradx
from gradx._tools import flat as gradx_flat
from gradx._tools import flat_packing

IDS = [c.name for c in CASES]

# A tree with a scalar, vectors, matrices, a 3-D leaf and two float dtypes (two buffers);
# b and f, e and g share a shape (sliced at runtime offsets), the others have their own.
SHAPES = {"a": (3, 4), "b": (5,), "c": (), "d": (2, 2, 2), "e": (7,), "f": (5,), "g": (7,)}
DTYPES = {
    "a": jnp.float32,
    "b": jnp.float32,
    "c": jnp.float32,
    "d": jnp.float64,
    "e": jnp.float64,
    "f": jnp.float32,
    "g": jnp.float64,
}


def _params(seed: int = 0) -> dict[str, jax.Array]:
    keys = jax.random.split(jax.random.key(seed), len(SHAPES))
    return {
        name: jax.random.normal(k, SHAPES[name], DTYPES[name])
        for k, name in zip(keys, sorted(SHAPES), strict=True)
    }


def _loss(params: dict[str, jax.Array]) -> jax.Array:
    # Different curvature per leaf, so that every leaf's trajectory is distinct.
    total = jnp.zeros((), jnp.float64)
    for i, name in enumerate(sorted(params)):
        x = params[name].astype(jnp.float64)
        total = total + (i + 1) * jnp.sum(x**2) + jnp.sum(jnp.sin(3.0 * x))
    return total


def _run(opt, steps: int = 6, state=None):
    params = _params()
    state = opt.init(params) if state is None else state

    @jax.jit
    def step(params, state):
        value, grads = jax.value_and_grad(_loss)(params)
        updates, state = opt.update(grads, state, params, value=value)
        return optax.apply_updates(params, updates), state

    for _ in range(steps):
        params, state = step(params, state)
    return params, state


ULPS = 8  # after 6 steps; 3 seen (nadam_optax_convention, float64), all others bit-equal


def _ulps(got: jax.Array, want: jax.Array) -> float:
    """The largest difference in units in the last place of ``want``."""
    got, want = np.asarray(got), np.asarray(want)
    return float(np.max(np.abs(got - want) / np.spacing(np.abs(want)), initial=0.0))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_flat_equals_per_leaf(case):
    want, want_state = _run(case.make(0.01, **case.hp))
    got, got_state = _run(gradx.flat(case.make(0.01, **case.hp)))
    for name in SHAPES:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape
        # The same operations on the same numbers; XLA fuses and vectorizes a long buffer and
        # a short leaf differently (e.g. where it contracts a multiply-add), so a coordinate
        # may differ in its last bit; normalized_sgd also sums its one norm in another order.
        assert _ulps(got[name], want[name]) <= ULPS, (name, _ulps(got[name], want[name]))
    assert isinstance(got_state, gradx.FlatState)
    want_hp, got_hp = gradx.hyperparams(want_state), gradx.hyperparams(got_state)
    assert sorted(got_hp) == sorted(want_hp)
    for name in want_hp:
        np.testing.assert_array_equal(got_hp[name], want_hp[name])


def test_flat_state_is_a_few_buffers_and_the_program_does_not_grow_with_leaves():
    params = _params()
    state = gradx.flat(gradx.adam(0.1)).init(params)
    moments = jax.tree.leaves(state.inner_state.inner_state)
    # mu and nu: one 1-D buffer per dtype each (float32: 12+5+1+5, float64: 8+7+7)
    assert sorted(x.shape for x in moments if x.ndim) == [(22,), (22,), (23,), (23,)]
    assert len(state.offsets) == 2  # one run each: b, f; e, g

    def sqrt_count(n: int, opt) -> int:
        leaves = [jnp.ones((3,), jnp.float32)] * n
        s = opt.init(leaves)
        jaxpr = jax.make_jaxpr(lambda g, s: opt.update(g, s, leaves))(leaves, s)
        return str(jaxpr).count(" sqrt ")

    assert sqrt_count(50, gradx.flat(gradx.adam(0.1))) == 1  # one buffer: one sqrt
    assert sqrt_count(50, gradx.adam(0.1)) == 50  # per leaf: one each


def test_a_static_zero_eps_adds_nothing_per_leaf():
    # rmsprop with ε outside the root has ε_root = 0, and precondition's default ε is 0: XLA
    # drops x + 0 from the compiled program, but tracing and lowering it cost time per leaf.
    def adds_of_zero(opt) -> int:
        leaves = [jnp.ones((3,), jnp.float32)] * 20
        jaxpr = jax.make_jaxpr(lambda g, s: opt.update(g, s, leaves))(leaves, opt.init(leaves))
        return sum(
            e.primitive.name == "add"
            and any(hasattr(v, "val") and np.ndim(v.val) == 0 and v.val == 0 for v in e.invars)
            for e in jaxpr.eqns
        )

    assert adds_of_zero(gradx.rmsprop(0.1)) == 0
    assert adds_of_zero(gradx.adagrad(0.1)) == 0  # ε_root = 0
    assert adds_of_zero(gradx.adagrad(0.1, eps_in_sqrt=True)) == 0  # precondition's ε = 0
    assert adds_of_zero(gradx.precondition(optax.identity(), gradx.rms(0.9))) == 0


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.name in ("adam", "rprop", "lookahead_momentum")], ids=str
)
def test_big_leaves_keep_their_own_buffer(case):
    # max_leaf_size=8: a (12 elements) is its own buffer; d (8) and the others are packed
    opt = gradx.flat(case.make(0.01, **case.hp), max_leaf_size=8)
    state = opt.init(_params())
    shapes = sorted({x.shape for x in jax.tree.leaves(state) if x.ndim})
    assert (3, 4) in shapes and (11,) in shapes and (22,) in shapes  # a; b+c+f; d+e+g
    want, _ = _run(case.make(0.01, **case.hp))
    got, _ = _run(opt)
    for name in SHAPES:
        assert _ulps(got[name], want[name]) <= ULPS


def test_leaves_of_one_shape_share_one_kernel():
    # 40 leaves of one shape: with runtime offsets every slice + apply is the same kernel
    leaves = [jnp.full((7,), float(i), jnp.float32) for i in range(40)] + [jnp.ones((3,))]
    grads = [jnp.full((7,), 0.1 * i, jnp.float32) for i in range(40)] + [jnp.ones((3,))]

    def compiled(opt):
        def step(p, s, g):
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s

        state = opt.init(leaves)
        return jax.jit(step).lower(leaves, state, grads).compile(), state

    shared, state = compiled(gradx.flat(gradx.adam(0.1)))
    # runs of ⌈∛40⌉ = 4 leaves: 10 runtime starts; the (3,) leaf has a shape of its own
    assert len(state.offsets) == 10
    np.testing.assert_array_equal(state.offsets, np.arange(10) * 28)
    constant, state_c = compiled(gradx.flat(gradx.adam(0.1), share_kernels=False))
    assert state_c.offsets == ()
    text = shared.as_text()
    assert text.count("dynamic-slice(") == 40
    assert constant.as_text().count("dynamic-slice(") == 0
    # each leaf sliced out of its run's 28 elements at 7 × its place in the run: the same
    # four static slices in every run, so 4 distinct kernels
    assert set(re.findall(r"slice=\{\[(\d+:\d+)\]\}", text)) == {"0:7", "7:14", "14:21", "21:28"}
    got, _ = shared(leaves, state, grads)
    want, _ = constant(leaves, state_c, grads)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(gradx.TreeMismatchError, match="flat: the state was built for"):
        gradx.flat(gradx.adam(0.1)).update(grads, state_c, leaves)
    with pytest.raises(TypeError, match="flat: share_kernels must be a bool, got 1"):
        gradx.flat(gradx.adam(0.1), share_kernels=1)


def test_set_hyperparams_and_vmap_sweep_through_flat():
    opt = gradx.flat(gradx.momentum(0.1, momentum=0.9))
    per_leaf = gradx.momentum(0.1, momentum=0.9)
    params = _params()
    lrs = jnp.asarray([0.01, 0.05, 0.2], jnp.float32)
    grads = jax.grad(_loss)(params)

    def one(opt, lr):
        state = gradx.set_hyperparams(opt.init(params), learning_rate=lr)
        updates, state = opt.update(grads, state, params)
        updates, _ = opt.update(grads, state, params)
        return updates

    got = jax.jit(jax.vmap(lambda lr: one(opt, lr)))(lrs)
    want = jax.jit(jax.vmap(lambda lr: one(per_leaf, lr)))(lrs)
    for name in SHAPES:
        np.testing.assert_array_equal(got[name], want[name])
    state = gradx.set_hyperparams(opt.init(params), learning_rate=0.3)
    assert float(gradx.hyperparams(state)["learning_rate"]) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="learning_rate must be >= 0"):
        gradx.set_hyperparams(state, learning_rate=-1.0)


def test_flat_slices_leaves_without_a_negative_index_check_each():
    # JAX wraps a negative dynamic_slice start with a compare and a select per slice; packed
    # offsets are never negative, and at 1,000 leaves those ops were a third of the trace
    # and more of the compile. What remains is the step count's saturating increment.
    params = [jnp.ones((10,), jnp.float32) for _ in range(30)]
    opt = gradx.flat(gradx.sgd(0.1))
    state = opt.init(params)
    text = str(jax.make_jaxpr(opt.update)(params, state, params))
    # one dynamic slice per run of ⌈∛30⌉ = 4 leaves, the leaves statically sliced out of it
    assert len(state.offsets) == 8 and text.count("dynamic_slice") == 8
    assert text.count("select_n") <= 1 and text.count(" lt ") <= 1


def test_flat_state_round_trips_through_pickle_msgpack_and_orbax(tmp_path):
    import orbax.checkpoint as ocp
    from flax import serialization

    opt = gradx.flat(gradx.adam(0.05))
    _, state = _run(opt, steps=3)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(tmp_path / "state", state)
    with ocp.StandardCheckpointer() as checkpointer:
        from_orbax = checkpointer.restore(tmp_path / "state", state)
    restored = {
        "pickle": pickle.loads(pickle.dumps(jax.device_get(state))),
        "msgpack": serialization.from_bytes(state, serialization.to_bytes(state)),
        "orbax": from_orbax,
    }
    want, _ = _run(opt, steps=2, state=state)
    for how, back in restored.items():
        assert type(back) is type(state), how  # a FlatState with the same params signature
        got, _ = _run(opt, steps=2, state=back)
        for name in SHAPES:
            np.testing.assert_array_equal(got[name], want[name], err_msg=how)


def test_flat_inside_a_flax_nnx_optimizer_equals_the_per_leaf_one():
    from flax import nnx

    class Net(nnx.Module):  # 12 small leaves of 4 shapes
        def __init__(self, rngs):
            self.a, self.b = nnx.Linear(3, 8, rngs=rngs), nnx.Linear(8, 8, rngs=rngs)
            self.c, self.d = nnx.Linear(8, 8, rngs=rngs), nnx.Linear(8, 8, rngs=rngs)
            self.e, self.f = nnx.Linear(8, 8, rngs=rngs), nnx.Linear(8, 2, rngs=rngs)

        def __call__(self, x):
            for layer in (self.a, self.b, self.c, self.d, self.e):
                x = jnp.tanh(layer(x))
            return self.f(x)

    x = jax.random.normal(jax.random.key(1), (16, 3), jnp.float32)

    @nnx.jit
    def step(model, optimizer):
        grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
        optimizer.update(model, grads)

    first, last = {}, {}
    for name, opt in [("leaf", gradx.adam(1e-2)), ("flat", gradx.flat(gradx.adam(1e-2)))]:
        model = Net(nnx.Rngs(0))
        optimizer = nnx.Optimizer(model, opt, wrt=nnx.Param)
        for k in range(4):
            if k == 2:  # set through nnx's wrapped state, as a schedule by hand would
                optimizer.opt_state = gradx.set_hyperparams(
                    optimizer.opt_state, learning_rate=0.005
                )
            step(model, optimizer)
            if k == 0:
                first[name] = nnx.as_pure(nnx.state(model, nnx.Param))
        last[name] = nnx.as_pure(nnx.state(model, nnx.Param))
        lr = gradx.hyperparams(nnx.as_pure(optimizer.opt_state))["learning_rate"]
        assert float(lr) == np.float32(0.005)
    assert isinstance(nnx.as_pure(optimizer.opt_state), gradx.FlatState)
    for a, b in zip(jax.tree.leaves(first["flat"]), jax.tree.leaves(first["leaf"]), strict=True):
        assert _ulps(a, b) <= ULPS  # one step from the same gradients
    # Then the gradients follow the params, and the network grows those ulps a little.
    for a, b in zip(jax.tree.leaves(last["flat"]), jax.tree.leaves(last["leaf"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


def test_fit_and_sweep_with_flat_equal_per_leaf():
    x = jax.random.normal(jax.random.key(3), (64, 5), jnp.float32)
    y = x @ jnp.arange(1.0, 6.0, dtype=jnp.float32)[:, None]
    params = {"w": jnp.zeros((5, 1), jnp.float32), "b": jnp.zeros((1,), jnp.float32)}

    def loss_fn(p, batch):
        xb, yb = batch
        return jnp.mean((xb @ p["w"] + p["b"][None, :] - yb) ** 2)

    kw = dict(batch_size=16, epochs=2, key=jax.random.key(0), progress=False)
    want = gradx.fit(loss_fn, params, gradx.adam(0.05), (x, y), **kw)
    got = gradx.fit(loss_fn, params, gradx.flat(gradx.adam(0.05)), (x, y), **kw)
    for name in params:  # to the last bits, as in test_flat_equals_per_leaf
        assert _ulps(got.params[name], want.params[name]) <= ULPS
    assert _ulps(got.history["loss"], want.history["loss"]) <= ULPS
    grid = {"learning_rate": np.asarray([0.01, 0.1], np.float32)}
    want_sweep = gradx.sweep(loss_fn, params, gradx.adam(0.05), (x, y), grid, **kw)
    got_sweep = gradx.sweep(loss_fn, params, gradx.flat(gradx.adam(0.05)), (x, y), grid, **kw)
    assert _ulps(got_sweep.history["loss"], want_sweep.history["loss"]) <= ULPS


def test_flat_refuses_what_it_cannot_do():
    params = _params()
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="flat: max_leaf_size must be None or an integer"):
            gradx.flat(gradx.adam(0.1), max_leaf_size=bad)
    with pytest.raises(ValueError, match=r"weight_decay: mask must be None inside gradx\.flat"):
        gradx.flat(gradx.adamw(0.1, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))).init(
            params
        )
    from gradx.compat import keras

    # Keras's clipnorm clips each variable by its own norm: packed, it would clip a buffer
    with pytest.raises(ValueError, match="clip_by_norm: clipnorm clips each variable"):
        gradx.flat(keras.Adam(0.1, clipnorm=1.0)).init(params)
    gradx.flat(keras.Adam(0.1, global_clipnorm=1.0)).init(params)  # one norm: packs
    opt = gradx.flat(gradx.adam(0.1))
    state = opt.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    with pytest.raises(gradx.TreeMismatchError, match="flat: the gradient at"):
        opt.update({**grads, "b": jnp.ones((5, 1), jnp.float32)}, state, params)
    with pytest.raises(TypeError, match="flat: each gradient must have its param's dtype"):
        opt.update({**grads, "b": jnp.ones((5,), jnp.float64)}, state, params)
    with pytest.raises(TypeError, match="flat: state must be the FlatState"):
        opt.update(grads, gradx.adam(0.1).init(params), params)


def test_flat_refuses_an_optimizer_that_is_not_one():
    for bad, shown in [("adam", "str 'adam'"), (None, "NoneType None"), (0.1, "float 0.1")]:
        with pytest.raises(
            TypeError,
            match=r"^flat: optimizer must be an optax GradientTransformation \(e\.g\. "
            rf"gradx\.adam\(1e-3\)\), got {re.escape(shown)}$",
        ):
            gradx.flat(bad)
    # what has init and update is an optimizer, as fit takes it (a wrapper of one)
    inner = gradx.sgd(0.1)
    duck = types.SimpleNamespace(init=inner.init, update=inner.update)
    params = {"w": jnp.ones(3)}
    updates, _ = gradx.flat(duck).update({"w": jnp.ones(3)}, gradx.flat(duck).init(params))
    np.testing.assert_allclose(updates["w"], -0.1)


def test_flat_refuses_gradients_of_other_shapes_than_the_params_it_packed():
    # Built for a: (2,), b: (4,); gradients a: (4,), b: (2,) pack into a buffer of the same
    # size, so before the state kept the params' signature they took a's moments for b's
    # coordinates. The per-leaf adam refuses the same call, naming the leaf.
    params = {"a": jnp.arange(2.0), "b": jnp.arange(4.0) + 10}
    grads = {"a": jnp.ones(2), "b": jnp.full(4, 3.0)}
    other = {"a": jnp.full(4, 3.0), "b": jnp.ones(2)}
    for opt in (gradx.adam(0.1), gradx.flat(gradx.adam(0.1))):
        state = opt.update(grads, opt.init(params), params)[1]
        with pytest.raises(gradx.TreeMismatchError, match=r"the gradient at \['a'\] has shape"):
            opt.update(other, state, other)
    opt = gradx.flat(gradx.adam(0.1))
    state = opt.init(params)
    shape = (
        r"^flat: the gradient at \['a'\] has shape \(4,\), but the state was built for "
        r"shape \(2,\) there; each gradient must have the shape of its param"
    )
    for update in (opt.update, jax.jit(opt.update)):  # a static check: also when traced
        with pytest.raises(gradx.TreeMismatchError, match=shape):
            update(other, state)  # without params too
    with pytest.raises(gradx.TreeMismatchError, match=shape):
        jax.vmap(opt.update, in_axes=(0, None))(jax.tree.map(lambda g: g[None], other), state)
    # another structure whose leaves have the same shapes: the same buffers, other leaves
    renamed = {"a": grads["a"], "c": grads["b"]}
    with pytest.raises(
        gradx.TreeMismatchError,
        match=r"^flat: the gradient tree does not match the params the state was built for: "
        r"its leaf 1 is at \['c'\], the params' at \['b'\]",
    ):
        opt.update(renamed, state)
    with pytest.raises(
        gradx.TreeMismatchError,
        match=r"^flat: the gradients have 1 leaves, but the state was built for params with 2",
    ):
        opt.update({"a": jnp.ones(6)}, state)
    # the state's own shapes still step, and as the per-leaf adam does
    got = opt.update(grads, state)[0]
    want = gradx.adam(0.1).update(grads, gradx.adam(0.1).init(params))[0]
    jax.tree.map(np.testing.assert_array_equal, got, want)


@pytest.mark.parametrize("share_kernels", [True, False])
def test_flat_refuses_a_gradient_of_another_dtype_than_its_param_without_params(share_kernels):
    # The dtype a leaf was packed with is in the state: without params the gradient's dtype
    # is checked against it, with the error given with params (it used to be a tree mismatch
    # of the packed buffers, or of the runs sliced out of them).
    params = {"a": jnp.ones(3, jnp.bfloat16), "b": jnp.ones(3, jnp.float32)}
    grads = {"a": jnp.ones(3, jnp.float32), "b": jnp.ones(3, jnp.float32)}
    opt = gradx.flat(gradx.sgd(0.1, momentum=0.9), share_kernels=share_kernels)
    state = opt.init(params)
    with pytest.raises(
        TypeError,
        match=r"^flat: the gradient at \['a'\] has dtype float32, but the state was built for a "
        r"bfloat16 param there; each gradient must have its param's dtype \(leaves are packed "
        r"by dtype\): cast the gradients to their params' dtypes$",
    ):
        opt.update(grads, state)
    with pytest.raises(  # with params, as before: against them
        TypeError,
        match=r"^flat: each gradient must have its param's dtype \(leaves are packed by "
        r"dtype\), got float32 for a bfloat16 param at \['a'\]; cast the gradients",
    ):
        opt.update(grads, state, params)
    good = {"a": grads["a"].astype(jnp.bfloat16), "b": grads["b"]}
    updates = opt.update(good, state)[0]
    assert updates["a"].dtype == jnp.bfloat16 and updates["b"].dtype == jnp.float32


def test_a_flat_state_keeps_its_params_signature_and_an_unsigned_one_still_steps():
    opt = gradx.flat(gradx.adam(0.05))
    params = _params()
    state = opt.init(params)
    signed = type(state)
    assert isinstance(state, gradx.FlatState) and signed is not gradx.FlatState
    assert dict((path, (shape, dtype)) for path, shape, dtype in signed.signature) == {
        f"['{k}']": (SHAPES[k], np.dtype(DTYPES[k]).name) for k in SHAPES
    }
    assert opt.init(_params(1)).__class__ is signed  # one class per signature: one treedef
    _, stepped = _run(opt, steps=2)
    assert type(stepped) is signed  # out of jit
    assert type(pickle.loads(pickle.dumps(stepped))) is signed
    treedef = jax.tree.structure(stepped)
    assert pickle.loads(pickle.dumps(treedef)) == treedef  # its class pickles by the signature
    assert type(gradx.set_hyperparams(stepped, learning_rate=0.01)) is signed
    # A state pickled before the signature is a plain FlatState: it loads and steps as the
    # signed one (its gradients checked only as before), and restored into init's state
    # (a target) it is signed again.
    old = pickle.loads(pickle.dumps(gradx.FlatState(*stepped)))
    assert type(old) is gradx.FlatState and old.signature is None
    want, _ = _run(opt, steps=2, state=stepped)
    got, _ = _run(opt, steps=2, state=old)
    jax.tree.map(np.testing.assert_array_equal, got, want)
    restored = jax.tree.unflatten(jax.tree.structure(state), jax.tree.leaves(old))
    assert type(restored) is signed
    from flax import serialization

    assert type(serialization.from_bytes(state, serialization.to_bytes(old))) is signed
    # fit given the unsigned state (its treedef prints as init's) signs it and continues
    x = np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32)
    data, small = (x, x.sum(axis=1)), {"w": jnp.zeros(3, jnp.float32)}

    def loss(p, batch):
        return jnp.mean((batch[0] @ p["w"] - batch[1]) ** 2)

    start = opt.init(small)
    common = dict(batch_size=4, epochs=2, key=jax.random.key(0), progress=False, flat=False)
    a = gradx.fit(loss, small, opt, data, opt_state=start, **common)
    b = gradx.fit(loss, small, opt, data, opt_state=gradx.FlatState(*start), **common)
    jax.tree.map(np.testing.assert_array_equal, (b.params, b.opt_state), (a.params, a.opt_state))
    assert type(b.opt_state) is type(start)
    # an unsigned state of an earlier gradx with a float16 v: fit names the moment and the cast
    half = {"w": jnp.zeros(3, jnp.float16)}
    old16 = gradx.FlatState(*gradx.flat(gradx.adam(0.05, nu_dtype=jnp.float16)).init(half))
    with pytest.raises(ValueError, match=r"first difference \(given vs init's\): .*nu.*dtype "
                       r"float16 vs .* dtype float32 \(an earlier gradx stored .* new = "
                       r"opt\.init\(params\); state = jax\.tree\.unflatten"):  # fmt: skip
        gradx.fit(loss, half, opt, jax.tree.map(lambda x: x.astype(jnp.float16), data),
                  opt_state=old16, **common)  # fmt: skip
    # a state signed for other params (same shapes, other names) is refused, never re-signed,
    # and the error tells the two classes apart by name
    other = opt.init({"v": jnp.zeros(3, jnp.float32)})
    assert type(other).__name__ != type(start).__name__
    assert re.fullmatch(r"FlatState\[1 leaf, [0-9a-f]{8}\]", type(start).__name__)
    with pytest.raises(ValueError, match=r"^fit: opt_state does not have the structure"):
        gradx.fit(loss, small, opt, data, opt_state=other, **common)


# ----------------------------------------------------------------------------- compile cache

_CACHE_WORKER = """
import json, logging, sys
import jax
jax.config.update("jax_compilation_cache_dir", sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
messages = []
class Keep(logging.Handler):
    def emit(self, record):
        messages.append(record.getMessage())
logger = logging.getLogger("jax._src.compiler")
logger.setLevel(logging.DEBUG)
logger.addHandler(Keep())
import jax.numpy as jnp, numpy as np, gradx
x = np.random.default_rng(0).standard_normal((64, 5)).astype(np.float32)
y = x.sum(axis=1, keepdims=True)
params = {"w": jnp.zeros((5, 1)), "b": jnp.zeros((1,))}
def loss(p, b):
    return jnp.mean((b[0] @ p["w"] + p["b"][None, :] - b[1]) ** 2)
kw = dict(batch_size=8, epochs=1, key=jax.random.key(0), progress=False)
fit = gradx.fit(loss, params, gradx.adam(0.01), (x, y), **kw)
sweep = gradx.sweep(loss, params, gradx.adam(0.01), (x, y), {"learning_rate": [0.01, 0.1]}, **kw)
epoch = [m for m in messages if "'jit_run_epoch_program'" in m]
print(json.dumps({
    "hits": sum(m.startswith("Persistent compilation cache hit") for m in epoch),
    "misses": sum("CACHE MISS" in m for m in epoch),
    "loss": [float(fit.history["loss"][0]), *map(float, sweep.history["loss"][:, 0])],
}))
"""


def test_fit_and_sweep_reuse_the_persistent_compilation_cache_across_processes(tmp_path):
    import json
    import subprocess
    import sys

    def run() -> dict:
        out = subprocess.run(
            [sys.executable, "-c", _CACHE_WORKER, str(tmp_path)],
            capture_output=True, text=True, timeout=300, check=True,
        )  # fmt: skip
        return json.loads(out.stdout.strip().splitlines()[-1])

    first = run()
    assert (first["hits"], first["misses"]) == (0, 2)  # fit's epoch program and sweep's
    assert any(p.name.startswith("jit_run_epoch_program") for p in tmp_path.iterdir())
    second = run()  # a new process: both programs come from the cache, none is compiled
    assert (second["hits"], second["misses"]) == (2, 0)
    assert second["loss"] == first["loss"]


# ----------------------------------------------------------------------------- fit packs


def _fit_problem():
    # Two dtypes, leaves of several shapes, and one leaf too big to pack (fit: max 1,024;
    # gradx.flat's default: 16,384).
    params = {
        "w1": jnp.full((5, 8), 0.1, jnp.float32),
        "b1": jnp.zeros((8,), jnp.float32),
        "w2": jnp.full((8, 1), 0.1, jnp.float32),
        "b2": jnp.zeros((1,), jnp.float32),
        "big": jnp.zeros((16385,), jnp.float32),
        "s": jnp.ones((3,), jnp.float64),
        "t": jnp.ones((3,), jnp.float64),
    }
    x = jax.random.normal(jax.random.key(3), (64, 5), jnp.float32)
    y = jnp.sin(x @ jnp.arange(1.0, 6.0, dtype=jnp.float32))[:, None]

    def loss_fn(p, batch):
        xb, yb = batch
        h = jnp.tanh(xb @ p["w1"] + p["b1"][None, :])
        out = h @ p["w2"] + p["b2"][None, :] + 1e-3 * jnp.mean(p["big"])
        extra = jnp.sum((p["s"] - 0.5) ** 2 + (p["t"] - 2.0) ** 2).astype(jnp.float32)
        return jnp.mean((out - yb) ** 2) + 1e-2 * extra

    return loss_fn, params, (x, y)


FIT_KW = dict(batch_size=16, epochs=3, key=jax.random.key(0), progress=False)


def _assert_close_runs(got, want):
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params), strict=True):
        assert a.dtype == b.dtype and _ulps(a, b) <= ULPS
    assert jax.tree.structure(got.opt_state) == jax.tree.structure(want.opt_state)
    for a, b in zip(jax.tree.leaves(got.opt_state), jax.tree.leaves(want.opt_state), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype and _ulps(a, b) <= ULPS
    assert _ulps(got.history["loss"], want.history["loss"]) <= ULPS


@pytest.fixture
def packed(monkeypatch):
    """Whether each packing decision of fit, sweep or search packed (a spy on it)."""
    calls = []
    real = flat_packing.packing

    def spy(optimizer, p):
        out = real(optimizer, p)
        calls.append(out[0] is not None)
        return out

    monkeypatch.setattr(flat_packing, "packing", spy)
    return calls


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fit_packs_by_itself_and_returns_the_optimizers_own_state(case, packed):
    loss_fn, params, data = _fit_problem()
    want = gradx.fit(loss_fn, params, case.make(0.01, **case.hp), data, flat=False, **FIT_KW)
    got = gradx.fit(loss_fn, params, case.make(0.01, **case.hp), data, **FIT_KW)
    assert packed == [True]  # every optimizer of the table is gradx's own: it packs
    _assert_close_runs(got, want)
    # The state is the optimizer's own layout: it continues by hand, and fit takes it back.
    opt = case.make(0.01, **case.hp)
    assert jax.tree.structure(got.opt_state) == jax.tree.structure(opt.init(params))
    again = gradx.fit(loss_fn, got.params, opt, data, opt_state=got.opt_state, **FIT_KW)
    again_leaf = gradx.fit(
        loss_fn, want.params, opt, data, opt_state=want.opt_state, flat=False, **FIT_KW
    )
    _assert_close_runs(again, again_leaf)


def test_fit_packs_leaves_of_at_most_1024_elements_and_leaves_bigger_ones_alone():
    # In fit's scanned epoch a bigger leaf costs more passes packed than kernels leaf by leaf.
    params = {"a": jnp.zeros((32, 32)), "b": jnp.zeros((1025,)), "c": jnp.zeros((3,))}
    packing, why = flat_packing.packing(gradx.adam(0.1), params)
    assert why == "" and gradx_flat.FIT_MAX_LEAF_SIZE == 1024
    state = packing.pack(gradx.adam(0.1).init(params))
    shapes = {x.shape for x in jax.tree.leaves(state.inner_state) if x.ndim}
    assert shapes == {(1024 + 3,), (1025,)}  # a and c in one buffer, b in its own
    big = {"a": jnp.zeros((1025,)), "b": jnp.zeros((2000,))}
    assert flat_packing.packing(gradx.adam(0.1), big)[0] is None


def test_flat_true_names_the_argument_or_the_block_that_keeps_it_leaf_by_leaf():
    # ADOPT is gradx's own, with a function among its arguments; Muon's blocks are per matrix
    loss_fn, params, data = _fit_problem()
    for opt, why in [
        (gradx.adopt(0.01), r"packed: it runs only gradx's own optimizers packed \(built from "
         r"numbers and flags, without a weight-decay mask\); adopt is gradx's own, but its clip_value_fn is a function \(quarter_power\), "
         r"neither a number nor a flag, so fit cannot tell that it treats every coordinate "
         r"alike: pass gradx.flat\(optimizer\) to pack it where it does$"),
        (gradx.muon(0.01), r"packed: split_matrices: params must not be packed by gradx.flat, "
         r"got a packed buffer: Muon treats each matrix as a whole"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=f"^fit: flat=True cannot run this optimizer {why}"):
            gradx.fit(loss_fn, params, opt, data, flat=True, **FIT_KW)


def test_fit_runs_leaf_by_leaf_where_packing_would_change_the_rule():
    loss_fn, params, data = _fit_problem()
    mask = {k: k.startswith("w") for k in params}
    from gradx.compat import keras

    for opt, why in [
        (gradx.adamw(0.01, mask=mask), "decoupled_weight_decay: mask must be None inside "),
        (keras.Adam(0.01, clipnorm=0.5), "clipnorm clips each variable by its own norm"),
        (optax.sgd(0.01, momentum=0.9), "gradx's own optimizers"),
        (gradx.chain(optax.clip_by_block_rms(1.0), gradx.sgd(0.1)), "gradx's own optimizers"),
        (gradx.adam(0.01, state_dtype="int8"), r"int8 moments are quantised in blocks of each"),
    ]:
        want = gradx.fit(loss_fn, params, opt, data, flat=False, **FIT_KW)
        got = gradx.fit(loss_fn, params, opt, data, **FIT_KW)  # leaf by leaf, by itself
        for a, b in zip(
            jax.tree.leaves((got.params, got.opt_state, got.history["loss"])),
            jax.tree.leaves((want.params, want.opt_state, want.history["loss"])),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)
        with pytest.raises(ValueError, match=f"fit: flat=True cannot run this optimizer .*{why}"):
            gradx.fit(loss_fn, params, opt, data, flat=True, **FIT_KW)
    with pytest.raises(ValueError, match=r"fit: flat=True cannot .*diagnostics=True"):
        gradx.fit(loss_fn, params, gradx.adam(0.1), data, flat=True, diagnostics=True, **FIT_KW)
    one = {"w": jnp.zeros((5, 1), jnp.float32)}
    with pytest.raises(ValueError, match=r"fit: flat=True cannot .*nothing to pack"):
        gradx.fit(lambda p, b: jnp.sum(b[0] @ p["w"]), one, gradx.adam(0.1), data, flat=True,
                  **FIT_KW)  # fmt: skip
    with pytest.raises(TypeError, match=r"fit: flat must be a bool, got .yes."):
        gradx.fit(loss_fn, params, gradx.adam(0.1), data, flat="yes", **FIT_KW)


def test_packed_fit_shows_callbacks_and_checkpoints_the_users_layout(tmp_path):
    loss_fn, params, data = _fit_problem()
    opt = gradx.adam(0.01)
    seen = []

    def halve_lr_at_1(epoch, logs, params, opt_state):
        seen.append(jax.tree.structure(opt_state))
        if epoch == 1:
            lr = gradx.hyperparams(opt_state)["learning_rate"] / 2
            return gradx.callbacks.Action(
                opt_state=gradx.set_hyperparams(opt_state, learning_rate=lr)
            )
        return None

    kw = dict(FIT_KW, callbacks=[halve_lr_at_1])
    want = gradx.fit(loss_fn, params, opt, data, flat=False, **kw)
    assert len(set(seen)) == 1 and seen[0] == jax.tree.structure(opt.init(params))
    seen.clear()
    got = gradx.fit(loss_fn, params, opt, data, **kw)
    assert len(set(seen)) == 1 and seen[0] == jax.tree.structure(opt.init(params))
    _assert_close_runs(got, want)
    assert float(gradx.hyperparams(got.opt_state)["learning_rate"]) == np.float32(0.005)
    # A checkpoint holds the user's layout: a packed run resumes one written leaf by leaf.
    ck = dict(FIT_KW, checkpoint_dir=tmp_path / "ck")
    gradx.fit(loss_fn, params, opt, data, flat=False, **dict(ck, epochs=2))
    resumed = gradx.fit(loss_fn, params, opt, data, resume=True, **ck)
    whole = gradx.fit(loss_fn, params, opt, data, flat=False, **FIT_KW)
    _assert_close_runs(resumed, whole)


def test_sweep_packs_too_and_returns_each_points_own_state():
    loss_fn, params, data = _fit_problem()
    grid = {"learning_rate": np.asarray([0.003, 0.03], np.float32)}
    kw = dict(FIT_KW, epochs=2)
    for make in (lambda: gradx.adam(0.01), lambda: gradx.momentum(0.01, momentum=0.9)):
        want = gradx.sweep(loss_fn, params, make(), data, grid, flat=False, **kw)
        got = gradx.sweep(loss_fn, params, make(), data, grid, **kw)
        _assert_close_runs(got, want)
        one = make().init(params)  # each point's state is the optimizer's own layout
        assert jax.tree.structure(got.opt_state) == jax.tree.structure(one)
        for a, b in zip(jax.tree.leaves(got.opt_state), jax.tree.leaves(one), strict=True):
            assert a.shape == (2, *b.shape) and a.dtype == b.dtype
    with pytest.raises(ValueError, match=r"sweep: flat=True cannot .*gradx's own"):
        gradx.sweep(loss_fn, params, optax.sgd(0.1), data, grid, flat=True, **kw)


def test_search_packs_too_through_pbt_copies_and_returns_each_members_own_state(packed):
    loss_fn, params, data = _fit_problem()
    space = {"learning_rate": gradx.search_space.loguniform(1e-3, 0.1)}
    kw = dict(FIT_KW, epochs=4, method="pbt", num_samples=4, ready=2)
    for make in (lambda: gradx.adam(0.01), lambda: gradx.momentum(0.01, momentum=0.9)):
        want = gradx.search(loss_fn, params, make(), data, space, flat=False, **kw)
        got = gradx.search(loss_fn, params, make(), data, space, **kw)
        assert packed.pop() is True
        assert got.lineage == want.lineage  # the same copies, the same perturbed values
        _assert_close_runs(got, want)
        one = make().init(params)  # each member's state is the optimizer's own layout
        assert jax.tree.structure(got.opt_state) == jax.tree.structure(one)
        for a, b in zip(jax.tree.leaves(got.opt_state), jax.tree.leaves(one), strict=True):
            assert a.shape == (4, *b.shape) and a.dtype == b.dtype
    # A given opt_state (the optimizer's own layout) is packed for every member.
    start = gradx.fit(loss_fn, params, gradx.adam(0.01), data, flat=False, **FIT_KW)
    kw = dict(FIT_KW, epochs=2, method="random", num_samples=2)
    want = gradx.search(loss_fn, start.params, gradx.adam(0.01), data, space,
                        opt_state=start.opt_state, flat=False, **kw)  # fmt: skip
    got = gradx.search(loss_fn, start.params, gradx.adam(0.01), data, space,
                       opt_state=start.opt_state, **kw)  # fmt: skip
    _assert_close_runs(got, want)
    with pytest.raises(ValueError, match=r"search: flat=True cannot .*gradx's own"):
        gradx.search(loss_fn, params, optax.sgd(0.1), data, space, flat=True, **kw)


def test_packed_fit_refuses_a_state_of_another_structure():
    loss_fn, params, data = _fit_problem()
    wrong = gradx.adam(0.01).init({k: v for k, v in params.items() if k != "b2"})
    with pytest.raises(gradx.TreeMismatchError, match=r"fit: opt_state does not have the"):
        gradx.fit(loss_fn, params, gradx.adam(0.01), data, opt_state=wrong, **FIT_KW)
    grid = {"learning_rate": np.asarray([0.01], np.float32)}
    with pytest.raises(gradx.TreeMismatchError, match=r"sweep: opt_state does not have the"):
        gradx.sweep(loss_fn, params, gradx.adam(0.01), data, grid, opt_state=wrong, **FIT_KW)
    space = {"learning_rate": 0.01}
    with pytest.raises(gradx.TreeMismatchError, match=r"search: opt_state does not have the"):
        gradx.search(loss_fn, params, gradx.adam(0.01), data, space, num_samples=1,
                     opt_state=wrong, **FIT_KW)  # fmt: skip


def test_runs_of_irregularly_spaced_leaves_slice_the_right_coordinates():
    # 60 leaves of 4 shapes in a shuffled order: runs whose spacing differs get kernels of
    # their own, and every leaf must still get its own coordinates back.
    rng = np.random.default_rng(0)
    shapes = [(3,), (2, 2), (5,), (1,)]
    order = rng.integers(0, len(shapes), 60)
    params = [jnp.asarray(rng.standard_normal(shapes[k]), jnp.float32) for k in order]
    grads = [jnp.asarray(rng.standard_normal(shapes[k]), jnp.float32) for k in order]

    def run(opt):
        state = opt.init(params)

        @jax.jit
        def step(p, s):
            u, s = opt.update(grads, s, p)
            return optax.apply_updates(p, u), s

        p = params
        for _ in range(3):
            p, state = step(p, state)
        return p, state

    want, _ = run(gradx.adam(0.1))
    got, state = run(gradx.flat(gradx.adam(0.1)))
    assert 4 < len(state.offsets) < 60  # runs, not one start per leaf
    for a, b in zip(got, want, strict=True):  # float32 rounding; a wrong slice is O(1) off
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_many_leaves_of_a_dtype_split_evenly_into_buffers_of_at_most_256():
    # XLA compiles a concatenation of n operands in time that grows faster than n, so 600
    # float32 leaves go to 3 buffers of 200 (and 5 float64 leaves to one); the numbers are
    # still the per-leaf ones, leaves of a shape shared across the buffers included.
    from gradx._tools import flat as _flat

    rng = np.random.default_rng(1)
    shapes = [(3,), (2, 2), (5,)]
    params = [jnp.asarray(rng.standard_normal(shapes[i % 3]), jnp.float32) for i in range(600)]
    params += [jnp.asarray(rng.standard_normal((4,)), jnp.float64) for _ in range(5)]
    grads = [jnp.asarray(rng.standard_normal(p.shape), p.dtype) for p in params]
    assert _flat.LEAVES_PER_BUFFER == 256
    layout = _flat.leaf_layout(params, None)
    assert [len(m) for m in layout.members] == [200, 200, 200, 5]
    assert layout.members[1][0] == 200 and layout.slots[200][:2] == (1, 0)

    def run(opt):
        @jax.jit
        def step(p, s):
            u, s = opt.update(grads, s, p)
            return optax.apply_updates(p, u), s

        p, state = params, opt.init(params)
        for _ in range(3):
            p, state = step(p, state)
        return p, state

    want, _ = run(gradx.adam(0.1))
    got, state = run(gradx.flat(gradx.adam(0.1)))
    sizes = [sum(params[i].size for i in m) for m in layout.members]
    assert [x.shape for x in state.inner_state.inner_state[0].direction.mean] == [
        (n,) for n in sizes
    ]
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert _ulps(a, b) <= ULPS


def test_fit_packs_300_leaves_into_two_buffers_and_gives_back_the_users_layout(packed):
    # More small leaves than one buffer holds: fit's host-side pack and unpack of the state
    # go through both buffers, and the run is the per-leaf one.
    params = [jnp.full((2,), 0.1 * (i % 7), jnp.float32) for i in range(300)]
    x = jax.random.normal(jax.random.key(4), (64, 2), jnp.float32)
    scale = jnp.arange(1.0, 301.0, dtype=jnp.float32) / 300

    def loss_fn(p, xb):
        stacked = jnp.stack(p)  # (300, 2)
        return jnp.mean((xb @ stacked.T - scale[None, :]) ** 2)

    want = gradx.fit(loss_fn, params, gradx.adam(0.01), x, flat=False, **FIT_KW)
    got = gradx.fit(loss_fn, params, gradx.adam(0.01), x, **FIT_KW)
    assert packed == [True]
    assert [len(m) for m in gradx_flat.leaf_layout(params, 1024).members] == [150, 150]
    _assert_close_runs(got, want)
