"""Checks of gradx on 8 simulated CPU devices, run in a subprocess by tests/test_sharding.py.

The device count must be set before jax is imported, so these checks cannot run in the
pytest process (which keeps one device for the rest of the suite). Each check runs and
records "ok" or its error; the result, {name: message}, is written as JSON to argv[1].

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharded_worker.py out.json
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time
import traceback

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, str(pathlib.Path(__file__).parent))

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import gradx  # noqa: E402
import gradx.compat.keras  # noqa: E402
import gradx.compat.optax  # noqa: E402
import gradx.compat.torch  # noqa: E402

RESULTS: dict[str, str] = {}
SECONDS: dict[str, float] = {}


def check(name):
    def run(fn):
        start = time.perf_counter()
        try:
            fn()
            RESULTS[name] = "ok"
            SECONDS[name] = time.perf_counter() - start
        except Exception:  # recorded, and reported by the pytest side
            RESULTS[name] = traceback.format_exc(limit=6)
        return fn

    return run


def mesh_of(kind):
    axis_type = AxisType.Auto if kind == "auto" else AxisType.Explicit
    return jax.make_mesh((8,), ("d",), axis_types=(axis_type,))


# ----------------------------------------------------------------------------- 1. states


# Four params of distinct shapes, so a state leaf's shape names the param it mirrors.
SPECS = {"w": P("d", None), "v": P(None, "d"), "b": P(), "c": P("d")}
SHAPES = {"w": (16, 3), "v": (3, 24), "b": (5,), "c": (32,)}


def sharded_params(mesh):
    rng = np.random.default_rng(0)
    return {
        k: jax.device_put(
            jnp.asarray(rng.normal(size=SHAPES[k]), jnp.float32), NamedSharding(mesh, SPECS[k])
        )
        for k in SHAPES
    }


def transforms():
    """(name, transform): the table's cases, lookahead fixed and fitted, rprop, compat."""
    import test_optimizers

    out = [(c.name, c.make(0.01, **c.hp)) for c in test_optimizers.CASES]
    out += [
        ("lookahead_fixed", gradx.lookahead(gradx.adam(0.01), sync_period=3, alpha=0.5)),
        ("lookahead_fitted", gradx.lookahead_fitted(0.01)),
        ("rprop", gradx.rprop(0.01)),
    ]
    for library in (gradx.compat.torch, gradx.compat.keras):
        for cls in ("SGD", "RMSprop", "Adagrad", "Adadelta", "Adam", "AdamW", "Adamax"):
            out.append((f"{library.__name__}.{cls}", getattr(library, cls)()))
    out.append(("torch.NAdam", gradx.compat.torch.NAdam()))
    out.append(("torch.Rprop", gradx.compat.torch.Rprop()))
    out.append(("keras.Nadam", gradx.compat.keras.Nadam()))
    out.append(("torch.SGD_momentum", gradx.compat.torch.SGD(lr=0.1, momentum=0.9)))
    for name in gradx.compat.optax.__all__:  # optax's names and defaults
        if name != "lookahead":
            out.append((f"optax.{name}", getattr(gradx.compat.optax, name)(0.1)))
    out.append(("optax.lookahead", gradx.compat.optax.lookahead(gradx.adam(0.01), 3, 0.5)))
    return out


def expect_follows(what, state, params, mesh):
    """Every state leaf: the sharding of the param of its shape, or replicated if a scalar."""
    by_shape = {p.shape: p.sharding for p in params.values()}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        where = f"{what}{jax.tree_util.keystr(path)}"
        s = leaf.sharding
        assert isinstance(s, NamedSharding) and s.mesh == mesh, f"{where}: {s}"
        want = NamedSharding(mesh, P()) if leaf.ndim == 0 else by_shape.get(leaf.shape)
        assert want is not None, f"{where}: a leaf of shape {leaf.shape} mirrors no param"
        assert s.is_equivalent_to(want, leaf.ndim), f"{where}: {s.spec}, want {want.spec}"


EXPLICIT = {"adam", "normalized_sgd", "rprop", "lookahead_fixed", "lookahead_fitted"}
EXPLICIT |= {"gradx.compat.torch.SGD", "gradx.compat.keras.Adam", "torch.Rprop"}


def states_follow(kind):
    mesh = mesh_of(kind)
    params = sharded_params(mesh)
    local = {k: jnp.asarray(np.asarray(v)) for k, v in params.items()}
    grads = jax.tree.map(lambda p: p * 0.5 + 0.1, params)
    local_grads = jax.tree.map(lambda p: p * 0.5 + 0.1, local)
    for name, opt in transforms():
        if kind == "explicit" and name not in EXPLICIT:  # the mesh type changes no block
            continue
        opt = optax.with_extra_args_support(opt)
        eager = opt.init(params)
        expect_follows(f"{name} eager init: state", eager, params, mesh)
        shapes = jax.eval_shape(opt.init, params)
        if kind == "explicit":
            with jax.set_mesh(mesh):
                jitted = jax.jit(opt.init)(params)
        else:
            out = gradx.state_shardings(shapes, params)
            jitted = jax.jit(opt.init, out_shardings=out)(params)
        expect_follows(f"{name} jit init: state", jitted, params, mesh)
        for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        update = jax.jit(opt.update)
        state = eager
        for _ in range(3):  # past lookahead's first sync (k = 3 above)
            updates, state = update(grads, state, params, value=jnp.float32(1.0))
        expect_follows(f"{name} jit update: state", state, params, mesh)
        expect_follows(f"{name} jit update: updates", updates, params, mesh)
        if name not in EXPLICIT:
            continue  # the others' numbers: fit_equals_single_device (test time)
        state1 = opt.init(local)
        for _ in range(3):
            want, state1 = update(local_grads, state1, local, value=jnp.float32(1.0))
        for a, b in zip(
            jax.tree.leaves((updates, state)), jax.tree.leaves((want, state1)), strict=True
        ):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


for _kind in ("auto", "explicit"):
    check(f"states_follow_params[{_kind}]")(lambda kind=_kind: states_follow(kind))


@check("blocks_with_shard_like_params")
def _():
    mesh = mesh_of("auto")
    params = sharded_params(mesh)
    for block in (gradx.trace(0.9), gradx.ema(0.9), gradx.rms(0.99), gradx.scale_by_rprop(0.1)):
        raw = block.init(params)
        state = gradx.shard_like_params(raw, params)
        expect_follows("block state", state, params, mesh)


@check("state_shardings_matches_paths")
def _():
    mesh = mesh_of("auto")
    x = jax.device_put(jnp.zeros((8, 8), jnp.float32), NamedSharding(mesh, P("d", None)))
    y = jax.device_put(jnp.zeros((8, 8), jnp.float32), NamedSharding(mesh, P(None, "d")))
    params = {"x": x, "y": y}  # same shape: only the path tells them apart
    state = gradx.adam(0.1).init(params)
    mean = state.inner_state[0].direction.mean
    assert mean["x"].sharding.spec == P("d", None), mean["x"].sharding
    assert mean["y"].sharding.spec == P(None, "d"), mean["y"].sharding


def state_dtype_follows(kind, policy, names):
    """int8 moments: codes placed like their param, absmax with their blocks (or replicated
    where blocks straddle shards: "r", "t" unaligned); bfloat16 rounded moments like params;
    after init, jitted init and jitted updates, with the one-device numbers."""
    mesh = mesh_of(kind)
    specs = {"w": P("d", None), "v": P(None, "d"), "a": P("d"), "t": P("d", None)}
    specs.update(r=P("d", None), b=P())
    shapes = {"w": (16, 512), "v": (4, 2048), "a": (2048,), "t": (2048, 3), "r": (64, 100)}
    shapes.update(b=(5,))
    absmax = {"w": P("d", None), "v": P(None, "d"), "a": P("d"), "t": P("d"), "r": P()}
    rng = np.random.default_rng(0)
    local = {k: jnp.asarray(rng.normal(size=shapes[k]), jnp.float32) for k in names}
    params = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in local.items()}

    def placed(x, spec, where):
        assert x.sharding.is_equivalent_to(NamedSharding(mesh, spec), x.ndim), (where, x.sharding)

    opt = gradx.adam(0.01, **policy)
    eager = opt.init(params)
    if kind == "explicit":
        with jax.set_mesh(mesh):
            jitted = jax.jit(opt.init)(params)
    else:
        out = gradx.state_shardings(jax.eval_shape(opt.init, params), params)
        jitted = jax.jit(opt.init, out_shardings=out)(params)
    update = jax.jit(opt.update)
    state, state1 = eager, opt.init(local)
    for k in range(2):
        u, state = update(jax.tree.map(lambda p, k=k: jnp.sin(p * (k + 1)), params), state)
        want, state1 = update(jax.tree.map(lambda p, k=k: jnp.sin(p * (k + 1)), local), state1)
    for s, what in ((eager, "eager init"), (jitted, "jit init"), (state, "jit update")):
        inner = s.inner_state[0]
        for moment in (inner.direction.mean, inner.by.nu):
            if isinstance(moment, gradx.RoundedMoment):
                placed(moment.key, P(), what)
                moment = moment.values
            for k, node in moment.items():
                if isinstance(node, (gradx.SignedFloat8Moment, gradx.UnsignedFloat8Moment)):
                    placed(node.codes, specs[k], f"{what} {k} codes")
                    placed(node.absmax, absmax[k], f"{what} {k} absmax")
                else:
                    placed(node, specs[k], f"{what} {k}")
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves((u, state)), jax.tree.leaves((want, state1)), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


INT8, ROUNDED = dict(state_dtype="int8"), dict(state_dtype="bfloat16", stochastic_rounding=True)
check("state_dtype_on_a_mesh[auto]")(lambda: state_dtype_follows("auto", INT8, "wvatrb"))
check("state_dtype_on_a_mesh[explicit]")(lambda: state_dtype_follows("explicit", INT8, "wrb"))
check("state_dtype_on_a_mesh[rounded]")(lambda: state_dtype_follows("auto", ROUNDED, "wb"))


# ----------------------------------------------------------------------------- 2. fit


def problem():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 12)).astype(np.float32)
    y = (x @ rng.normal(size=(12, 8)) > 0).astype(np.float32)
    params = {
        "w1": jnp.asarray(rng.normal(size=(12, 32)) * 0.3, jnp.float32),
        "b1": jnp.zeros(32, jnp.float32),
        "w2": jnp.asarray(rng.normal(size=(32, 8)) * 0.3, jnp.float32),
        "b2": jnp.zeros(8, jnp.float32),
    }
    return params, (x, y)


def loss_fn(params, batch):
    x, y = batch
    h = jnp.tanh(x @ params["w1"] + params["b1"][None, :])
    return jnp.mean(optax.sigmoid_binary_cross_entropy(h @ params["w2"] + params["b2"][None, :], y))


def accuracy(params, batch):
    x, y = batch
    h = jnp.tanh(x @ params["w1"] + params["b1"][None, :])
    return jnp.mean(((h @ params["w2"] + params["b2"][None, :] > 0) == (y > 0)).astype(jnp.float32))


FIT = {"batch_size": 16, "epochs": 4, "key": jax.random.key(3), "progress": False}
OPTIMIZERS = {
    "adam": lambda: gradx.adam(0.01),
    "momentum": lambda: gradx.momentum(0.05, momentum=0.9),
    "rprop": lambda: gradx.rprop(0.01),
    "lookahead_fitted": lambda: gradx.lookahead_fitted(0.05),
    # not coordinate-wise: Newton–Schulz on the sharded matrices (fsdp splits w1 and w2)
    "muon": lambda: gradx.muon(0.02, weight_decay=0.01),
}


def close(got, want, what):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5, err_msg=what)


def fit_equals(name):
    params, data = problem()
    one = gradx.fit(loss_fn, params, OPTIMIZERS[name](), data, eval_fn=accuracy, **FIT)
    mesh = mesh_of("auto")
    dp = gradx.fit(loss_fn, params, OPTIMIZERS[name](), data, eval_fn=accuracy, mesh=mesh, **FIT)
    rule = gradx.fsdp(mesh)
    fs = gradx.fit(loss_fn, params, OPTIMIZERS[name](), data, mesh=mesh, shard_params=rule, **FIT)
    for got, what in ((dp, "data-parallel"), (fs, "fsdp")):
        close(got.params, one.params, f"{name} {what} params")
        close(got.opt_state, one.opt_state, f"{name} {what} state")
        np.testing.assert_allclose(got.history["loss"], one.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(dp.history["eval"], one.history["eval"], rtol=1e-5)
    for k, p in dp.params.items():
        assert p.sharding.is_equivalent_to(NamedSharding(mesh, P()), p.ndim), (k, p.sharding)
    want = {"w1": P(None, "d"), "w2": P("d", None), "b1": P(), "b2": P()}
    for k, p in fs.params.items():
        assert p.sharding.is_equivalent_to(NamedSharding(mesh, want[k]), p.ndim), (k, p.sharding)
    expect_follows(f"{name} fsdp state", fs.opt_state, fs.params, mesh)


for _name in OPTIMIZERS:
    check(f"fit_equals_single_device[{_name}]")(lambda name=_name: fit_equals(name))


@check("fit_equals_single_device[adafactor]")
def _():
    # A 128×128 matrix, factored (a row and a column statistic, replicated) while FSDP splits
    # the matrix itself over the 8 devices: the partitioner reduces the means across them.
    rng = np.random.default_rng(2)
    _, (_, y) = problem()
    x = rng.normal(size=(64, 128)).astype(np.float32)
    params = {
        "w1": jnp.asarray(rng.normal(size=(128, 128)) * 0.1, jnp.float32),
        "b1": jnp.zeros(128, jnp.float32),
        "w2": jnp.asarray(rng.normal(size=(128, 8)) * 0.3, jnp.float32),
        "b2": jnp.zeros(8, jnp.float32),
    }
    opt = gradx.adafactor(0.02, momentum=0.5)
    one = gradx.fit(loss_fn, params, opt, (x, y), **FIT)
    mesh = mesh_of("auto")
    fs = gradx.fit(loss_fn, params, opt, (x, y), mesh=mesh, shard_params=gradx.fsdp(mesh), **FIT)
    close(fs.params, one.params, "adafactor fsdp params")
    close(fs.opt_state, one.opt_state, "adafactor fsdp state")
    np.testing.assert_allclose(fs.history["loss"], one.history["loss"], rtol=1e-5)
    split = NamedSharding(mesh, P("d", None))
    assert fs.params["w1"].sharding.is_equivalent_to(split, 2), fs.params["w1"].sharding
    block = fs.opt_state.inner_state[0]
    assert block.v_row["w1"].shape == (128,) and block.v["w1"].shape == (1,), block.v_row["w1"]


@check("muon_on_an_explicit_mesh")
def _():
    # Newton–Schulz contracts the split axis of w (rows split) and v (columns split): with
    # explicit axes X·Xᵀ has no sharding type of its own (JAX's ShardingTypeError, also
    # optax.contrib.muon's), so the iteration runs with the axes automatic
    mesh = mesh_of("explicit")
    for name, opt, keys in (
        ("gradx.muon", gradx.muon(0.02, weight_decay=0.01), "wvbc"),
        ("gradx.muon adaptive", gradx.muon(0.02, adaptive=True, preconditioning="aol"), "wvbc"),
        ("torch.Muon", gradx.compat.torch.Muon(0.02), "wv"),  # matrices only
    ):
        params = {k: v for k, v in sharded_params(mesh).items() if k in keys}
        local = {k: jnp.asarray(np.asarray(v)) for k, v in params.items()}
        grads = jax.tree.map(lambda p: p * 0.5 + 0.1, params)
        local_grads = jax.tree.map(lambda p: p * 0.5 + 0.1, local)
        with jax.set_mesh(mesh):
            state = jax.jit(opt.init)(params)
        update = jax.jit(opt.update)
        for _ in range(2):
            updates, state = update(grads, state, params)
        expect_follows(f"{name} jit update: state", state, params, mesh)
        expect_follows(f"{name} jit update: updates", updates, params, mesh)
        state1 = opt.init(local)
        for _ in range(2):
            want, state1 = update(local_grads, state1, local)
        close((updates, state), (want, state1), f"{name} on an explicit mesh")
    params, data = problem()
    one = gradx.fit(loss_fn, params, gradx.muon(0.02), data, **FIT)
    specs = {"w1": P(None, "d"), "b1": P("d"), "w2": P("d", None), "b2": P()}
    got = gradx.fit(loss_fn, params, gradx.muon(0.02), data, mesh=mesh, shard_params=specs, **FIT)
    close(got.params, one.params, "muon fit on an explicit mesh")
    split = NamedSharding(mesh, P("d", None))
    assert got.params["w2"].sharding.is_equivalent_to(split, 2), got.params["w2"].sharding


@check("fit_explicit_mesh_and_spec_tree")
def _():
    params, data = problem()
    one = gradx.fit(loss_fn, params, gradx.adam(0.01), data, **FIT)
    mesh = mesh_of("explicit")
    specs = {"w1": P(None, "d"), "b1": P("d"), "w2": None, "b2": P()}
    got = gradx.fit(loss_fn, params, gradx.adam(0.01), data, mesh=mesh, shard_params=specs, **FIT)
    close(got.params, one.params, "explicit mesh")
    assert got.params["w1"].sharding.mesh == mesh, got.params["w1"].sharding
    assert got.params["w1"].sharding.spec == P(None, "d"), got.params["w1"].sharding
    expect_follows("explicit fit state", got.opt_state, got.params, mesh)
    full = gradx.fit(loss_fn, params, gradx.sgd(0.1), data, **{**FIT, "batch_size": None})
    full8 = gradx.fit(
        loss_fn, params, gradx.sgd(0.1), data, mesh=mesh, **{**FIT, "batch_size": None}
    )
    close(full8.params, full.params, "full batch")


def raises(match, fn):
    try:
        fn()
    except (ValueError, TypeError) as e:
        assert match in str(e), f"wrong message: {e}"
        return
    raise AssertionError(f"no error; expected {match!r}")


@check("fit_errors")
def _():
    params, (x, y) = problem()
    mesh = mesh_of("auto")
    opt = gradx.sgd(0.1)
    kw = {k: v for k, v in FIT.items() if k != "batch_size"}
    raises(
        "fit: batch_size must be divisible by the 8 devices of the mesh's data axis 'd', got 12",
        lambda: gradx.fit(loss_fn, params, opt, (x, y), batch_size=12, mesh=mesh, **kw),
    )
    raises(
        "fit: the number of examples must be divisible by the 8 devices of the mesh's data "
        "axis 'd' for a full-batch fit (batch_size=None), got 60",
        lambda: gradx.fit(loss_fn, params, opt, (x[:60], y[:60]), batch_size=None, mesh=mesh, **kw),
    )
    raises(
        "fit: shard_params gives P('d', None) to params['w1'] of shape (12, 32): "
        "its dimension 0 (12) must be divisible by the 8 devices of mesh axis 'd'",
        lambda: gradx.fit(
            loss_fn, params, opt, (x, y), batch_size=16, mesh=mesh,
            shard_params=lambda path, shape: P("d", None) if len(shape) == 2 else P(), **kw,
        ),
    )  # fmt: skip
    raises(
        "the mesh has no axis 'model'",
        lambda: gradx.fit(
            loss_fn, params, opt, (x, y), batch_size=16, mesh=mesh,
            shard_params={"w1": P("model"), "b1": None, "w2": None, "b2": None}, **kw,
        ),
    )  # fmt: skip
    raises(
        "fit: mesh must be a jax.sharding.Mesh",
        lambda: gradx.fit(loss_fn, params, opt, (x, y), batch_size=16, mesh="d", **kw),
    )


@check("streamed_fit_on_a_mesh")
def _():
    params, (x, y) = problem()
    key, b = FIT["key"], FIT["batch_size"]

    def batches(epoch):  # the in-memory path's own minibatches, fed from the host
        order = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), len(x)))
        for i in range(0, len(x) - b + 1, b):
            yield (x[order[i : i + b]], y[order[i : i + b]])

    one = gradx.fit(loss_fn, params, gradx.adam(0.01), (x, y), **FIT)
    mesh = mesh_of("explicit")
    kw = {**FIT, "key": None, "steps_per_execution": 3}
    dp = gradx.fit(loss_fn, params, gradx.adam(0.01), batches, mesh=mesh, **kw)
    rule = gradx.fsdp(mesh)
    fs = gradx.fit(loss_fn, params, gradx.adam(0.01), batches, mesh=mesh, shard_params=rule, **kw)
    for got, what in ((dp, "streamed data-parallel"), (fs, "streamed fsdp")):
        close(got.params, one.params, f"{what} params")
        close(got.opt_state, one.opt_state, f"{what} state")
        np.testing.assert_allclose(got.history["loss"], one.history["loss"], rtol=1e-5)
    assert fs.params["w1"].sharding.mesh == mesh and fs.params["w1"].sharding.spec == P(None, "d")
    expect_follows("streamed fsdp state", fs.opt_state, fs.params, mesh)

    def twelves(epoch):
        yield (x[:12], y[:12])

    raises(
        "fit: the batch size must be divisible by the 8 devices of the mesh's data axis 'd', "
        "got batches of 12 examples",
        lambda: gradx.fit(
            loss_fn, params, gradx.sgd(0.1), twelves, mesh=mesh, **{**kw, "batch_size": None}
        ),
    )


@check("fit_accumulate_and_ema_on_a_mesh")
def _():
    # FSDP with windows of 2 micro-batches of 8 (each split over the 8 devices) and an
    # average of the params: the one-device numbers, the average sharded like the params;
    # and the same windows streamed (a group of S windows reshaped on the mesh).
    params, (x, y) = problem()
    kw = {**FIT, "batch_size": 8, "epochs": 2, "accumulate": 2, "ema": 0.9}
    one = gradx.fit(loss_fn, params, gradx.adam(0.01), (x, y), **kw)
    mesh = mesh_of("explicit")
    rule = gradx.fsdp(mesh)
    fs = gradx.fit(loss_fn, params, gradx.adam(0.01), (x, y), mesh=mesh, shard_params=rule, **kw)

    def batches(epoch):  # the in-memory path's own minibatches, fed from the host
        order = np.asarray(jax.random.permutation(jax.random.fold_in(FIT["key"], epoch), len(x)))
        for i in range(0, len(x), 8):
            yield (x[order[i : i + 8]], y[order[i : i + 8]])

    streamed = gradx.fit(
        loss_fn, params, gradx.adam(0.01), batches, mesh=mesh, shard_params=rule,
        steps_per_execution=3, **{**kw, "key": None},
    )  # fmt: skip
    for got, what in ((fs, "fsdp"), (streamed, "streamed fsdp")):
        assert (got.steps_per_epoch, got.dropped_per_epoch) == (4, 0), what
        close(got.params, one.params, f"{what} accumulated params")
        close(got.ema_params, one.ema_params, f"{what} average")
        np.testing.assert_allclose(got.history["loss"], one.history["loss"], rtol=1e-5)
        for k, p in got.ema_params.items():
            assert p.sharding == got.params[k].sharding, (what, k, p.sharding)
    assert fs.ema_params["w1"].sharding.spec == P(None, "d"), fs.ema_params["w1"].sharding


# ----------------------------------------------------------------------------- 3. sweep


@check("sweep_over_devices")
def _():
    params, data = problem()
    mesh = mesh_of("auto")
    grid = {"learning_rate": [0.01, 0.03, 0.1, 0.3, 1.0]}  # K = 5 over 8 devices: padded
    opt = gradx.momentum(0.1, momentum=0.5)
    got = gradx.sweep(loss_fn, params, opt, data, grid, mesh=mesh, **FIT)
    assert len(got) == 5 and got.epoch_seconds.shape[0] == 1, got.epoch_seconds.shape
    for k, lr in enumerate(grid["learning_rate"]):
        one = gradx.fit(loss_fn, params, gradx.momentum(lr, momentum=0.5), data, **FIT)
        close(got.point(k).params, one.params, f"sweep point {k}")
        np.testing.assert_allclose(got.history["loss"][k], one.history["loss"], rtol=1e-5)
    chunked = gradx.sweep(loss_fn, params, opt, data, grid, mesh=mesh, chunk_size=8, **FIT)
    close(chunked.params, got.params, "chunk_size=8")
    raises(
        "sweep: chunk_size must be a multiple of the mesh's 8 devices",
        lambda: gradx.sweep(loss_fn, params, opt, data, grid, mesh=mesh, chunk_size=3, **FIT),
    )
    explicit = gradx.sweep(loss_fn, params, opt, data, grid, mesh=mesh_of("explicit"), **FIT)
    close(explicit.params, got.params, "explicit mesh sweep")


if __name__ == "__main__":
    assert jax.device_count() == 8, jax.devices()
    pathlib.Path(sys.argv[1]).write_text(json.dumps(RESULTS, indent=1))
    print(json.dumps(SECONDS))
