"""The command line: ``python -m gradx [list | race | compare] ...``.

``python -m gradx`` lists the optimizers and the commands; ``race`` races every optimizer on
classic 2-D problems (see ``gradx/_cli/race.py``); ``compare`` runs ``gradx/_cli/compare.py``
when that module is present.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import time
from collections.abc import Sequence

COMMANDS = {
    "list": "list the optimizers and the commands (the default)",
    "race": "race every optimizer on classic 2-D problems, each at its best learning rate",
    "compare": "train a digit classifier with every optimizer at its best learning rate",
}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _names(choices: Sequence[str], what: str):
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        if not names:
            raise argparse.ArgumentTypeError(f"give at least one {what}")
        unknown = [n for n in names if n not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(map(repr, unknown))}; choose from {', '.join(choices)}"
            )
        return list(dict.fromkeys(names))

    return parse


def _lr_grid(text: str) -> tuple[float, float, int]:
    parts = text.split(",")
    try:
        lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
        ok = len(parts) == 3 and 0 < lo < hi and math.isfinite(hi) and n >= 2
    except (ValueError, IndexError):
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(
            f"must be LO,HI,N with 0 < LO < HI and N >= 2 (e.g. 1e-5,100,29), got {text!r}"
        )
    return lo, hi, n


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    import gradx
    from gradx._cli import race as _race
    from gradx._cli.report import plot_path

    parser = argparse.ArgumentParser(
        prog="python -m gradx",
        description="gradx: composable, jit-compiled optimizers for JAX.",
    )
    parser.add_argument("--version", action="version", version=f"gradx {gradx.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = {"list": sub.add_parser("list", help=COMMANDS["list"])}

    race = sub.add_parser(
        "race",
        help=COMMANDS["race"],
        description=(
            "Race every optimizer in gradx.OPTIMIZERS on classic 2-D problems. For each "
            "optimizer and problem a log-spaced grid of learning rates runs in one vmapped, "
            "jitted program; the race keeps the one that settles within --tol in the fewest "
            "steps (ties, and never: the lowest final loss; diverged runs never)."
        ),
    )
    lo, hi, n = _race.LR_GRID
    race.add_argument("--steps", type=_positive_int, default=3000, help="steps per run (3000)")
    race.add_argument(
        "--tol", type=_positive_float, default=1e-6, help="tolerance on f − f* (1e-6)"
    )
    race.add_argument(
        "--problems",
        type=_names(list(_race.PROBLEMS), "problem"),
        default=list(_race.PROBLEMS),
        metavar="A,B",
        help=f"problems to race on ({','.join(_race.PROBLEMS)})",
    )
    race.add_argument(
        "--optimizers",
        type=_names(list(gradx.OPTIMIZERS), "optimizer"),
        default=None,
        metavar="A,B",
        help="optimizers to race (all of gradx.OPTIMIZERS)",
    )
    race.add_argument(
        "--lr-grid",
        type=_lr_grid,
        default=_race.LR_GRID,
        metavar="LO,HI,N",
        help=f"log-spaced learning rates to try ({lo:g},{hi:g},{n})",
    )
    race.add_argument(
        "--plot",
        type=plot_path,
        metavar="OUT.png",
        help="draw the trajectories over the loss contours (.png is added when OUT has no "
        "extension)",
    )
    commands["race"] = race

    # compare parses its own arguments (gradx._cli.compare.main), so this parser takes none.
    commands["compare"] = sub.add_parser("compare", help=COMMANDS["compare"], add_help=False)
    return parser, commands


def _first_line(obj: object) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def _list() -> int:
    import gradx

    names = list(gradx.OPTIMIZERS)
    width = max(map(len, [*names, *COMMANDS])) + 2
    print(f"gradx {gradx.__version__}: composable, jit-compiled optimizers for JAX\n")
    print(f"Optimizers ({len(names)}, gradx.OPTIMIZERS):")
    for name in names:
        print(f"  {name:<{width}}{_first_line(gradx.OPTIMIZERS[name])}")
    print("\nCommands:")
    for name, text in COMMANDS.items():
        print(f"  {name:<{width}}{text}")
    print("\nRun `python -m gradx COMMAND -h` for a command's options.")
    return 0


def _compare(argv: list[str]) -> int:
    try:
        module = importlib.import_module("gradx._cli.compare")
    except ModuleNotFoundError as e:
        if e.name != "gradx._cli.compare":
            print(f"compare is not available: it needs {e.name!r} ({e})", file=sys.stderr)
        else:
            print("compare is not available in this installation of gradx", file=sys.stderr)
        return 1
    return int(module.main(argv) or 0)


def _race_command(args: argparse.Namespace) -> int:
    import numpy as np

    import gradx
    from gradx._cli import race as _race

    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("race --plot needs matplotlib: pip install 'gradx[examples]'", file=sys.stderr)
            return 2

    names = args.optimizers or list(gradx.OPTIMIZERS)
    contestants, failed = {}, []
    for name in names:
        opt, why = _race.contestant(name, gradx.OPTIMIZERS[name])
        if opt is None:
            print(f"skipped {name}: {why}")
        else:
            contestants[name] = opt
    if not contestants:
        print("nothing to race: every optimizer asked for was skipped", file=sys.stderr)
        return 1

    lo, hi, n = args.lr_grid
    grid = np.logspace(np.log10(lo), np.log10(hi), n)
    problems = [_race.PROBLEMS[p] for p in args.problems]
    started = time.perf_counter()
    results: dict[str, list[_race.Result]] = {}
    for problem in problems:
        results[problem.name] = []
        for name, opt in contestants.items():
            try:
                result = _race.race_one(name, opt, problem, grid, args.steps, args.tol)
            except Exception as e:  # report it, race the others, exit non-zero
                failed.append(name)
                print(f"{name} failed on {problem.name}: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            results[problem.name].append(result)
        print()
        print(_race.format_table(problem, results[problem.name], args.steps, args.tol))
        sys.stdout.flush()
    elapsed = time.perf_counter() - started
    print(
        f"\n{len(contestants)} optimizers x {len(problems)} problems x {n} learning rates "
        f"({lo:g} to {hi:g}) in {elapsed:.1f} s"
    )
    if args.plot:
        try:
            _race.plot(problems, results, args.plot)
        except _race.PlotError as e:
            print(f"race: --plot: cannot write {args.plot!r} ({e})", file=sys.stderr)
            return 1
        print(f"wrote {args.plot}")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, commands = _parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command == "compare":
        at = argv.index("compare")
        if argv[:at]:  # the top-level parser takes no option that reaches here
            parser.error(f"unrecognized arguments: {' '.join(argv[:at])}")
        return _compare(argv[at + 1 :])
    if unknown:
        commands.get(args.command, parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "race":
        return _race_command(args)
    return _list()
