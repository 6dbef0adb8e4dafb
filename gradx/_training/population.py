"""A population of models for search: rows of a vmapped state, ranked, copied, perturbed."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradx._protocol.access import set_hyperparams
from gradx._training import mesh as _mesh
from gradx._training.fit import progress_postfix
from gradx._training.inputs import rule_error
from gradx._training.program import Program, minibatch_indices, run_epoch_program
from gradx._training.results import Copy, ranking


@dataclasses.dataclass
class Population:
    """The fixed context of a search: program, data, placement, bookkeeping."""

    program: Program
    data: Any
    eval_data: Any
    key: Any
    mesh: Any
    chunk_size: int | None
    history: dict[str, np.ndarray]
    seconds: list[float]
    bar: Any

    def train(self, params: Any, states: Any, members: np.ndarray, e0: int, e1: int):
        """Epochs e0..e1−1 of a population whose rows are ``members``; records history."""
        fn = "search"
        k = len(members)
        chunk = k if self.chunk_size is None else min(self.chunk_size, k)
        plan, chunk = _mesh.sweep_plan(fn, self.mesh, chunk, self.chunk_size, k)
        outs = []
        for c in range(math.ceil(k / chunk)):
            index = np.minimum(np.arange(c * chunk, (c + 1) * chunk), k - 1)  # pad: repeat
            # Fresh buffers (the epoch program donates them), placed on the mesh.
            p, s = _mesh.place_grid(plan, take_rows((params, states), index))
            used = min(chunk, k - c * chunk)
            rows = members[c * chunk : c * chunk + used]
            for epoch in range(e0, e1):
                t0 = time.perf_counter()
                batches = minibatch_indices(self.program, self.key, epoch, self.data)
                p, s, loss, metrics = run_epoch_program(
                    self.program, p, s, self.data, self.eval_data, batches
                )
                out = {"loss": np.asarray(loss), **{n: np.asarray(v) for n, v in metrics.items()}}
                self.seconds.append(time.perf_counter() - t0)
                for name, v in out.items():
                    if name not in self.history:
                        self.history[name] = np.full_like(self.history["loss"], np.nan)
                    self.history[name][rows, epoch] = v[:used]
                if self.bar is not None:
                    i = int(np.argmin(np.where(np.isfinite(out["loss"]), out["loss"], np.inf)))
                    shown = progress_postfix(
                        float(out["loss"][i]),
                        {n: float(v[i]) for n, v in out.items() if n != "loss"},
                    )
                    self.bar.set_postfix(
                        {"member": str(int(rows[min(i, used - 1)])), **shown}, refresh=False
                    )
                    self.bar.update()
            outs.append(jax.tree.map(lambda x, used=used: x[:used], (p, s)))
        if len(outs) == 1:
            return outs[0]
        return jax.tree.map(lambda *xs: jnp.concatenate(xs), *outs)


def take_rows(tree: Any, index: np.ndarray) -> Any:
    """Rows ``index`` of every leaf: new buffers."""
    return jax.tree.map(lambda x: x[index], tree)


def set_rows(tree: Any, index: np.ndarray, rows: Any) -> Any:
    """``tree`` with rows ``index`` of every leaf replaced by ``rows``."""
    return jax.tree.map(lambda x, y: x.at[index].set(y), tree, rows)


@jax.jit
def _exploit(params: Any, states: Any, source: jax.Array, values: dict[str, jax.Array]):
    """Row k of the population becomes row ``source[k]``, then takes hyperparameters
    ``values[name][k]``: a copy is exact (a gather), and only the hyperparameters change."""
    params, states = jax.tree.map(lambda x: x[source], (params, states))
    states = jax.vmap(lambda s, v: set_hyperparams(s, **v))(states, values)
    return params, states


def check_values(state0: Any, values: dict[str, np.ndarray], rows: Any, what: str) -> None:
    """Each member's values against the optimizer's rules and relations (set_hyperparams)."""
    for k in rows:
        point = {name: v[k].item() for name, v in values.items()}
        try:
            set_hyperparams(state0, **point)
        except (ValueError, TypeError) as e:
            where = {name: f"space[{name!r}]" for name in point}
            error = rule_error("search", e, where, f" (the {what} value of member {k})")
            if error is not None:  # one value breaks its rule: name the space's key
                raise error from None
            raise ValueError(
                f"search: the {what} hyperparameters of member {k}, {point}, cannot be set "
                f"in the optimizer's state: {e}"
            ) from None


def pbt_step(key, epoch, scores, mode, opts, values, dists, dtypes, state0, params, states):
    """One exploit-and-explore step of PBT; updates ``values`` in place, returns the copies."""
    k = len(scores)
    n = max(1, int(k * opts["fraction"]))
    order = ranking(scores, mode)
    top, bottom = order[:n], order[k - n :]
    pick, coin, direction, fresh = jax.random.split(key, 4)
    sources = top[np.asarray(jax.random.randint(pick, (n,), 0, n))]
    resample = (
        np.asarray(jax.random.uniform(coin, (n, max(len(dists), 1)))) < opts["resample_probability"]
    )
    up = np.asarray(jax.random.bernoulli(direction, 0.5, (n, max(len(dists), 1))))
    new = {name: v.copy() for name, v in values.items()}
    for name in values:
        new[name][bottom] = values[name][sources]
    for j, (name, dist) in enumerate(dists.items()):
        moved = dist.perturb(values[name][sources].astype(np.float64), up[:, j], opts["perturb"])
        drawn = dist.sample(jax.random.fold_in(fresh, j), n)
        new[name][bottom] = np.where(resample[:, j], drawn, moved).astype(dtypes[name])
    check_values(state0, new, bottom, "perturbed")
    source_index = np.arange(k)
    source_index[bottom] = sources
    params, states = _exploit(
        params, states, jnp.asarray(source_index), {n: jnp.asarray(v) for n, v in new.items()}
    )
    copies = [
        Copy(epoch, int(m), int(s), {name: new[name][m].item() for name in new})
        for m, s in zip(bottom, sources, strict=True)
    ]
    for name in values:
        values[name][...] = new[name]
    return params, states, copies
