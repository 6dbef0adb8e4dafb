"""Run by tests/test_checkpoint.py in a subprocess: a fit that kills itself, then resumes.

python checkpoint_worker.py DIR OUT.npz kill_at   # SIGKILLs itself after epoch kill_at
python checkpoint_worker.py DIR OUT.npz -1        # resumes and writes the result
"""

import os
import signal
import sys

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from checkpoint_problem import run  # noqa: E402


def main() -> None:
    directory, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])

    def killer(epoch, logs, params, opt_state):
        if epoch == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: a real crash

    result = run(directory, callbacks=[killer], resume=True)
    leaves = jax.tree.leaves((result.params, result.opt_state))
    np.savez(out, *[np.asarray(x) for x in leaves], loss=result.history["loss"])


if __name__ == "__main__":
    main()
