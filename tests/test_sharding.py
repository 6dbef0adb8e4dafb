"""gradx on many devices: states that follow the params, data-parallel/FSDP fit, sharded sweep.

The device count of a JAX process is fixed when jax is imported, and this suite keeps one
device, so the checks run in subprocesses: ``sharded_worker.py`` on 8 simulated CPU devices
(all its checks in one process, to pay its start and compiles once), and two
``multihost_worker.py`` processes joined by ``jax.distributed.initialize`` on localhost with
gloo CPU collectives, 4 devices each. Every result is compared with a one-device run.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

try:
    import fcntl
except ImportError:  # Windows: no lock; each xdist worker then runs its own worker process
    fcntl = None

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from multihost_problem import FIT, loss_fn, optimizer, problem

import gradx

HERE = pathlib.Path(__file__).parent
CHECKS = [
    "states_follow_params[auto]",
    "states_follow_params[explicit]",
    "blocks_with_shard_like_params",
    "state_shardings_matches_paths",
    "state_dtype_on_a_mesh[auto]",
    "state_dtype_on_a_mesh[explicit]",
    "state_dtype_on_a_mesh[rounded]",
    "fit_equals_single_device[adam]",
    "fit_equals_single_device[momentum]",
    "fit_equals_single_device[rprop]",
    "fit_equals_single_device[lookahead_fitted]",
    "fit_equals_single_device[muon]",
    "fit_equals_single_device[adafactor]",
    "muon_on_an_explicit_mesh",
    "fit_explicit_mesh_and_spec_tree",
    "fit_errors",
    "streamed_fit_on_a_mesh",
    "fit_accumulate_and_ema_on_a_mesh",
    "sweep_over_devices",
]


def _env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory, request):
    """The worker's results, computed once per test session: pytest-xdist gives each of its
    workers this module fixture, and the worker process takes about 100 s on 2 cores, so
    the first xdist worker to get here runs it under a lock in the session's shared
    temporary folder and the others read its results."""
    shared = tmp_path_factory.getbasetemp()
    if hasattr(request.config, "workerinput"):  # an xdist worker: the parent is shared
        shared = shared.parent
    out = shared / "sharded_results.json"
    with open(shared / "sharded_results.lock", "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not out.exists():
            run = subprocess.run(
                [sys.executable, str(HERE / "sharded_worker.py"), str(out)],
                env=_env(),
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert run.returncode == 0, run.stderr[-4000:]
        return json.loads(out.read_text())


@pytest.mark.parametrize("name", CHECKS)
def test_on_eight_devices(eight_devices, name):
    assert name in eight_devices, f"the worker ran no check {name!r}: {sorted(eight_devices)}"
    assert eight_devices[name] == "ok", eight_devices[name]


def test_every_worker_check_is_listed(eight_devices):
    assert sorted(eight_devices) == sorted(CHECKS)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
    """Two hosts, each feeding its half of the data (as arrays, then streamed), train the
    params one process trains."""
    out = tmp_path / "params.npz"
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "multihost_worker.py"), str(i), port, str(out)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    codes = [p.returncode for p in procs]
    assert codes == [0, 0], "\n".join(f"process {i}: {log[-3000:]}" for i, log in enumerate(logs))
    got = np.load(out)
    params, data = problem()
    want = gradx.fit(loss_fn, params, optimizer(), data, **FIT)
    for prefix in ("", "streamed_"):  # arrays of each host's examples, and streamed batches
        for name, value in want.params.items():
            np.testing.assert_allclose(got[prefix + name], value, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[prefix + "loss"], want.history["loss"], rtol=1e-5)


# ----------------------------------------------------------------------------- one device


def test_shard_params_needs_a_mesh():
    params, data = problem()
    with pytest.raises(ValueError, match="fit: shard_params needs a mesh, got mesh=None"):
        gradx.fit(loss_fn, params, optimizer(), data, shard_params={"w1": P()}, **FIT)


def test_fsdp_rule_splits_the_largest_divisible_axis():
    mesh = jax.make_mesh((1,), ("data",))
    rule = gradx.fsdp(mesh)
    assert rule((), (12, 32)) == P(None, "data")
    assert rule((), (32,)) == P()  # vectors stay replicated
    with pytest.raises(ValueError, match=r"fsdp: axis must be one of \('data',\), got 'model'"):
        gradx.fsdp(mesh, "model")


def test_state_shardings_needs_placed_params():
    with pytest.raises(ValueError, match=r"state_shardings: params must be jax\.Arrays placed"):
        gradx.state_shardings({"a": 1.0}, {"a": np.zeros(3)})
