"""Write the intersphinx inventories the offline docs build resolves against.

The site builds with no network (``.ci/run``, ``nitpicky = True``), so the inventories of the
projects the docs link to are committed here: ``python.inv``, ``numpy.inv``, ``jax.inv`` and
``optax.inv``, each a Sphinx version-2 inventory (four header lines, then zlib-compressed
``name domain:role priority uri dispname`` lines) holding only the names gradx's pages and
docstrings reference, with the real addresses of those projects' documentation.

Where the list comes from: the names a build with an inventory missing reports as
``reference target not found`` (python, numpy, jax, optax targets only), plus the names the
guides are likely to cite. To add one, append it to ``NAMES`` below and rerun::

    python docs/_inventories/make.py

then rebuild (``python -m sphinx -W --keep-going -b html docs docs/_build/html``).
"""

from __future__ import annotations

import pathlib
import zlib

HERE = pathlib.Path(__file__).resolve().parent

# project: (version, [(name, domain:role, page relative to the project's base address)])
# A page without "#" gets "#<name>" appended, the anchor Sphinx gives an object.
_PY = "library/"
_EXC = _PY + "exceptions.html"
_FUNCS = _PY + "functions.html"
_TYPES = _PY + "stdtypes.html"
NAMES: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "python": (
        "3",
        [
            ("int", "py:class", _FUNCS),
            ("float", "py:class", _FUNCS),
            ("bool", "py:class", _FUNCS),
            ("str", "py:class", _TYPES),
            ("dict", "py:class", _TYPES),
            ("list", "py:class", _TYPES),
            ("tuple", "py:class", _TYPES),
            ("callable", "py:function", _FUNCS),
            ("None", "py:data", _PY + "constants.html"),
            ("Exception", "py:exception", _EXC),
            ("ValueError", "py:exception", _EXC),
            ("TypeError", "py:exception", _EXC),
            ("KeyError", "py:exception", _EXC),
            ("RuntimeError", "py:exception", _EXC),
            ("OSError", "py:exception", _EXC),
            ("FileNotFoundError", "py:exception", _EXC),
            ("UserWarning", "py:exception", _EXC),
            ("typing.NamedTuple", "py:class", _PY + "typing.html"),
            ("typing.Any", "py:data", _PY + "typing.html"),
            ("collections.abc.Callable", "py:class", _PY + "collections.abc.html"),
            ("collections.abc.Iterable", "py:class", _PY + "collections.abc.html"),
            ("collections.abc.Iterator", "py:class", _PY + "collections.abc.html"),
            ("collections.abc.Mapping", "py:class", _PY + "collections.abc.html"),
            ("collections.abc.Sequence", "py:class", _PY + "collections.abc.html"),
            ("pathlib.Path", "py:class", _PY + "pathlib.html"),
            ("functools.partial", "py:function", _PY + "functools.html"),
        ],
    ),
    "numpy": (
        "2",
        [
            ("numpy.ndarray", "py:class", "reference/generated/numpy.ndarray.html"),
            ("numpy.asarray", "py:function", "reference/generated/numpy.asarray.html"),
            ("numpy.float32", "py:class", "reference/arrays.scalars.html"),
            ("numpy.float64", "py:class", "reference/arrays.scalars.html"),
            ("numpy.dtype", "py:class", "reference/generated/numpy.dtype.html"),
            ("numpy.random.default_rng", "py:function", "reference/random/generator.html"),
        ],
    ),
    "jax": (
        "0.10",
        [
            (name, "py:function", f"_autosummary/{name}.html")
            for name in (
                "jax.jit",
                "jax.grad",
                "jax.value_and_grad",
                "jax.vmap",
                "jax.pmap",
                "jax.device_put",
                "jax.devices",
                "jax.make_mesh",
                "jax.random.key",
                "jax.random.PRNGKey",
                "jax.random.split",
                "jax.random.normal",
                "jax.lax.scan",
                "jax.lax.stop_gradient",
                "jax.tree_util.tree_map",
                "jax.tree.map",
                "jax.numpy.asarray",
                "jax.numpy.zeros",
            )
        ]
        + [
            ("jax.Array", "py:class", "_autosummary/jax.Array.html"),
            ("jax.numpy", "py:module", "jax.numpy.html#module-jax.numpy"),
            ("jax.typing.ArrayLike", "py:data", "jax.typing.html"),
            ("jax.sharding.Mesh", "py:class", "jax.sharding.html"),
            ("jax.sharding.NamedSharding", "py:class", "jax.sharding.html"),
            ("jax.sharding.PartitionSpec", "py:class", "jax.sharding.html"),
            ("jax.sharding.Sharding", "py:class", "jax.sharding.html"),
        ],
    ),
    "optax": (
        "0.2.8",
        [
            (f"optax.{name}", "py:function", "api/optimizers.html")
            for name in (
                "adabelief adadelta adafactor adagrad adam adamax adamaxw adamw amsgrad "
                "lamb lars lion nadam nadamw noisy_sgd novograd radam rmsprop rprop sgd sign_sgd "
                "sm3 yogi"
            ).split()
        ]
        + [
            (f"optax.{name}", "py:function", "api/transformations.html")
            for name in (
                "add_decayed_weights add_noise clip clip_by_global_norm identity "
                "scale scale_by_adam scale_by_learning_rate scale_by_rms scale_by_rprop "
                "scale_by_schedule trace ema set_to_zero"
            ).split()
        ]
        + [
            (f"optax.{name}", "py:class", "api/transformations.html")
            for name in (
                "GradientTransformation GradientTransformationExtraArgs OptState Params "
                "Updates EmptyState ScaleByAdamState"
            ).split()
        ]
        + [
            (f"optax.{name}", "py:function", f"api/generated/optax.{name}.html")
            for name in ("chain", "named_chain", "partition")
        ]
        + [
            ("optax.lookahead", "py:function", "api/optimizer_wrappers.html"),
            ("optax.LookaheadParams", "py:class", "api/optimizer_wrappers.html"),
            ("optax.MultiSteps", "py:class", "api/optimizer_wrappers.html"),
            ("optax.apply_if_finite", "py:function", "api/optimizer_wrappers.html"),
            ("optax.apply_updates", "py:function", "api/apply_updates.html"),
            ("optax.safe_increment", "py:function", "api/utilities.html"),
            ("optax.schedules", "py:module", "api/optimizer_schedules.html#optimizer-schedules"),
        ]
        # optax documents its schedules (and inject_hyperparams) under optax.schedules; the
        # top-level aliases (optax.cosine_decay_schedule) point at the same entries.
        + [
            (f"{prefix}{name}", role, f"api/optimizer_schedules.html#optax.schedules.{name}")
            for prefix in ("optax.", "optax.schedules.")
            for name, role in [
                (n, "py:function")
                for n in (
                    "constant_schedule cosine_decay_schedule cosine_onecycle_schedule "
                    "exponential_decay join_schedules linear_schedule "
                    "piecewise_constant_schedule polynomial_schedule "
                    "warmup_cosine_decay_schedule inject_hyperparams"
                    # gradx.schedules re-exports these (docs/api/schedules.md)
                    " warmup_constant_schedule warmup_exponential_decay_schedule sgdr_schedule"
                    " linear_onecycle_schedule piecewise_interpolate_schedule"
                    " inject_stateful_hyperparams"
                ).split()
            ]
            + [
                (n, "py:class")
                for n in (
                    "InjectHyperparamsState Schedule InjectStatefulHyperparamsState "
                    "StatefulSchedule WrappedSchedule"
                ).split()
            ]
        ]
        + [
            (f"optax.losses.{name}", "py:function", "api/losses.html")
            for name in (
                "l2_loss squared_error sigmoid_binary_cross_entropy softmax_cross_entropy "
                "softmax_cross_entropy_with_integer_labels"
            ).split()
        ],
    ),
}


def inventory(project: str, version: str, names: list[tuple[str, str, str]]) -> bytes:
    """A Sphinx version-2 inventory (``objects.inv``) of ``names``."""
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n"
        f"# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    lines = []
    for name, role, page in sorted(set(names)):
        uri = page if "#" in page else f"{page}#$"  # "$": the anchor is the name itself
        lines.append(f"{name} {role} 1 {uri} -\n")
    return header.encode() + zlib.compress("".join(lines).encode(), 9)


def main() -> None:
    for project, (version, names) in NAMES.items():
        (HERE / f"{project}.inv").write_bytes(inventory(project, version, names))
        print(f"{project}.inv: {len(set(names))} names")


if __name__ == "__main__":
    main()
