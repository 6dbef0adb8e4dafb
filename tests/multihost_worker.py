"""One of two processes of a data-parallel fit over two hosts, run by tests/test_sharding.py.

    python tests/multihost_worker.py PROCESS_ID PORT OUT.npz

Each process has 4 CPU devices, joins the coordinator on 127.0.0.1:PORT with gloo CPU
collectives, and passes ``gradx.fit`` its own half of the examples (process 0 the first
half), then again as a stream of its half of each minibatch; the mesh spans the 8 devices of
both. Process 0 writes the final params of both runs to OUT.npz.
"""

from __future__ import annotations

import sys

import jax

process_id, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}",
    num_processes=2,
    process_id=process_id,
    initialization_timeout=60,
)

import numpy as np  # noqa: E402
from jax.sharding import AxisType  # noqa: E402
from multihost_problem import FIT, loss_fn, optimizer, problem  # noqa: E402

import gradx  # noqa: E402

assert jax.device_count() == 8 and jax.local_device_count() == 4, jax.devices()
params, (x, y) = problem()
half = len(x) // 2
mine = slice(process_id * half, (process_id + 1) * half)  # this host's shard of the data
mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
result = gradx.fit(loss_fn, params, optimizer(), (x[mine], y[mine]), mesh=mesh, **FIT)
gathered = {k: np.asarray(v) for k, v in result.params.items()}  # replicated: host values


def my_batches(epoch):
    """Streamed: this host's half of each global minibatch of the in-memory path."""
    b = FIT["batch_size"]
    order = np.asarray(jax.random.permutation(jax.random.fold_in(FIT["key"], epoch), len(x)))
    for i in range(0, len(x) - b + 1, b):
        rows = order[i + process_id * b // 2 : i + (process_id + 1) * b // 2]
        yield (x[rows], y[rows])


streamed = gradx.fit(
    loss_fn, params, optimizer(), my_batches, mesh=mesh,
    **{**FIT, "batch_size": None, "key": None, "steps_per_execution": 2},
)  # fmt: skip
gathered.update({f"streamed_{k}": np.asarray(v) for k, v in streamed.params.items()})
if process_id == 0:
    np.savez(out, loss=result.history["loss"], streamed_loss=streamed.history["loss"], **gathered)
jax.distributed.shutdown()
