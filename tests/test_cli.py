"""The command line (``python -m gradx``) and the race's choice of learning rates."""

from __future__ import annotations

import io
import math
import subprocess
import sys
import types

import numpy as np
import pytest

import gradx
from gradx._cli import race as _race
from gradx._cli import report
from gradx._cli.main import main


def _tables(out: str) -> dict[str, dict[str, tuple[str, str, str]]]:
    """{problem title: {optimizer: (lr, steps, final loss)}} parsed from race's output."""
    tables: dict[str, dict[str, tuple[str, str, str]]] = {}
    rows = None
    for line in out.splitlines():
        if " from (" in line and "steps until" in line:
            rows = tables.setdefault(line.split(" from (")[0], {})
        elif (
            rows is not None and line.startswith("  ") and line.split()[0] not in ("optimizer", "*")
        ):
            name, lr, steps, final = line.split()
            rows[name] = (lr.rstrip("*"), steps, final)
        elif not line.strip():
            rows = None
    return tables


# ----------------------------------------------------------------------------- listing


def test_listing_names_every_optimizer_and_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name, make in gradx.OPTIMIZERS.items():
        first_line = make.__doc__.strip().splitlines()[0]
        assert any(line.split() == [name, *first_line.split()] for line in out.splitlines())
    for command in ("race", "compare", "list"):
        assert command in out
    assert main(["list"]) == 0
    assert capsys.readouterr().out == out


def test_python_dash_m_gradx_runs():
    done = subprocess.run(
        [sys.executable, "-m", "gradx"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "sgd" in done.stdout and "race" in done.stdout


# ----------------------------------------------------------------------------- race


def test_race_prints_a_row_per_optimizer_and_problem(capsys):
    code = main(
        [
            "race",
            "--optimizers",
            "sgd,momentum",
            "--problems",
            "quadratic,rosenbrock",
            "--steps",
            "200",
            "--tol",
            "1e-3",
        ]
    )
    assert code == 0
    tables = _tables(capsys.readouterr().out)
    titles = [_race.PROBLEMS[p].title for p in ("quadratic", "rosenbrock")]
    assert list(tables) == titles
    for rows in tables.values():
        assert set(rows) == {"sgd", "momentum"}
        for lr, steps, final in rows.values():
            assert float(lr) > 0
            assert steps == "—" or 0 <= int(steps) <= 200
            assert math.isfinite(float(final))
    # In 200 steps momentum settles within 1e-3 on the quadratic; plain GD, whose slow mode
    # shrinks by 1 - 2/101 per step at best, does not.
    quadratic = tables[titles[0]]
    assert int(quadratic["momentum"][1]) < 200
    assert quadratic["sgd"][1] == "—"


def test_sgd_picks_the_largest_stable_learning_rate_on_the_quadratic():
    problem = _race.PROBLEMS["quadratic"]
    grid = np.logspace(-5, 1, 25)
    steps, tol = 600, 1e-6
    got = _race.race_one("sgd", gradx.sgd(0.1), problem, grid, steps, tol)

    # The same runs in NumPy, float64, from the Hessian written out: H = Q diag(1, 100) Qᵀ.
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    q = np.array([[c, -s], [s, c]])
    h = q @ np.diag([1.0, 100.0]) @ q.T
    center, start = np.array([1.0, 1.0]), np.array(problem.start)
    settle, final = [], []
    for lr in grid:
        d = start - center
        losses = []
        with np.errstate(over="ignore", invalid="ignore"):
            for _ in range(steps + 1):
                losses.append(0.5 * d @ h @ d)
                d = d - lr * (h @ d)
        losses = np.array(losses)
        stays = np.logical_and.accumulate((losses <= tol)[::-1])[::-1]
        settle.append(int(np.argmax(stays)) if stays.any() else None)
        final.append(losses[-1])
    stable = [lr for lr in grid if lr < 2 / 100]  # GD is stable iff lr < 2 / λ_max
    fastest = min((t, i) for i, t in enumerate(settle) if t is not None)[1]
    assert grid[fastest] == max(stable)
    assert got.learning_rate == pytest.approx(max(stable), rel=1e-6)
    assert abs(got.steps - settle[fastest]) <= 1  # float32 against float64
    assert got.final_loss == pytest.approx(final[fastest], abs=1e-9)
    assert not got.at_edge


def test_choose_never_picks_a_diverged_run_and_breaks_ties_by_final_loss():
    lrs = np.array([0.1, 0.2, 0.3, 0.4])
    inf, nan = np.inf, np.nan
    loss = np.array(
        [
            [9.0, 1e-7, 1e-8, 1e-9],  # settles at step 1, final 1e-9
            [9.0, 1e-7, 1e-8, 1e-10],  # settles at step 1, final 1e-10: wins the tie
            [9.0, 1e-9, inf, inf],  # dips below tol, then diverges
            [9.0, 1e-9, 1e-9, nan],  # NaN at the end
        ]
    )
    runs = _race.Runs(lrs, np.zeros((4, 4, 2)), loss)
    np.testing.assert_array_equal(_race.steps_to_tolerance(loss, 1e-6), [1, 1, -1, -1])
    assert _race.choose(runs, 1e-6) == 1
    # Nothing settles: the lowest finite final loss wins.
    never = _race.Runs(lrs, np.zeros((4, 4, 2)), loss + 1.0)
    assert _race.choose(never, 1e-6) == 1
    # Everything diverged: nothing is chosen.
    assert _race.choose(_race.Runs(lrs, np.zeros((4, 2, 2)), np.full((4, 2), nan)), 1.0) is None


def test_race_skips_wrappers_and_optimizers_that_need_more_than_a_learning_rate(
    monkeypatch, capsys
):
    monkeypatch.setitem(gradx.OPTIMIZERS, "wrapped", lambda inner, period=5: inner)
    monkeypatch.setitem(gradx.OPTIMIZERS, "needy", lambda learning_rate, decay: gradx.sgd(1.0))
    code = main(
        ["race", "--optimizers", "sgd,wrapped,needy", "--problems", "quadratic", "--steps", "20"]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "skipped wrapped: a wrapper" in out
    assert "skipped needy: needs more than a learning rate: decay" in out
    assert set(_tables(out)[_race.PROBLEMS["quadratic"].title]) == {"sgd"}


def test_race_plot_writes_a_png(tmp_path, capsys):
    out = tmp_path / "race.png"
    code = main(
        [
            "race",
            "--optimizers",
            "sgd",
            "--problems",
            "quadratic,beale",
            "--steps",
            "30",
            "--plot",
            str(out),
        ]
    )
    assert code == 0
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    assert f"wrote {out}" in capsys.readouterr().out


def test_race_plot_without_matplotlib_says_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    code = main(["race", "--optimizers", "sgd", "--plot", str(tmp_path / "x.png")])
    assert code != 0
    assert "gradx[examples]" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["race", "--steps", "0"], "--steps: must be an integer >= 1"),
        (["race", "--steps", "many"], "--steps: must be an integer >= 1"),
        (["race", "--tol", "-1"], "--tol: must be a finite number > 0"),
        (["race", "--optimizers", "sgd,nope"], "unknown optimizer 'nope'; choose from sgd"),
        (["race", "--problems", "moon"], "unknown problem 'moon'; choose from quadratic"),
        (["race", "--lr-grid", "1,0.1,5"], "--lr-grid: must be LO,HI,N"),
        (["race", "--bogus"], "unrecognized arguments: --bogus"),
        (["sprint"], "invalid choice: 'sprint'"),
    ],
)
def test_bad_flags_exit_non_zero_with_a_clear_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------- compare


def test_compare_dispatches_its_arguments_to_gradx_compare(monkeypatch):
    seen = []
    fake = types.ModuleType("gradx._cli.compare")
    fake.main = lambda argv: seen.append(argv) or 3
    monkeypatch.setitem(sys.modules, "gradx._cli.compare", fake)
    assert main(["compare", "-h", "--steps", "5", "adam"]) == 3
    assert seen == [["-h", "--steps", "5", "adam"]]


def test_compare_when_not_installed_says_so(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradx._cli.compare", None)  # as if the module were absent
    assert main(["compare"]) == 1
    assert "compare is not available" in capsys.readouterr().err


def test_compare_help_says_what_compare_does(capsys):
    with pytest.raises(SystemExit):
        main(["-h"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "peers" not in out
    assert "train a digit classifier with every optimizer at its best learning rate" in out
    assert main([]) == 0
    assert "compare" in capsys.readouterr().out


# ----------------------------------------------------------------------------- bad paths and values


def _compare_main(argv):
    from gradx._cli import compare as _compare

    return _compare.main(argv)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--plot", "out.xyz"], "--plot: must end in a file type matplotlib writes"),
        (["--seed", "99999999999999999999"], "--seed: must be an integer in [0, 2**32)"),
        (["--seed", "-1"], "--seed: must be an integer in [0, 2**32), got '-1'"),
        (["--optimizers", "sgd,foo"], "got 'sgd,foo': unknown 'foo'; choose from sgd"),
    ],
)
def test_compare_refuses_bad_values_before_training(argv, message, capsys):
    assert _compare_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_plot_refuses_a_directory_and_adds_png_to_a_bare_name(tmp_path, capsys):
    assert _compare_main(["--plot", str(tmp_path)]) == 2
    assert "--plot: must be a file path, not a directory" in capsys.readouterr().err
    assert report.plot_path(str(tmp_path / "noext")) == str(tmp_path / "noext.png")
    assert report.plot_path("out.PDF") == "out.PDF"
    assert report.plot_path("") == ""
    with pytest.raises(SystemExit) as exit_:
        main(["race", "--plot", "r.xyz"])
    assert exit_.value.code == 2
    assert "--plot: must end in a file type matplotlib writes" in capsys.readouterr().err


def test_compare_plot_prints_the_path_it_wrote_and_reports_unwritable_ones(tmp_path, capsys):
    args = ["--optimizers", "sgd", "--epochs", "1", "--lrs", "0.1", "--plot"]
    assert _compare_main([*args, str(tmp_path / "noext")]) == 0
    assert f"convergence plot: {tmp_path / 'noext.png'}\n" in capsys.readouterr().out
    assert (tmp_path / "noext.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "file").write_text("")
    assert _compare_main([*args, str(tmp_path / "file" / "x.png")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("compare: --plot: cannot write")


def test_race_plot_reports_an_unwritable_path_in_one_line(tmp_path, capsys):
    out = tmp_path / "missing" / "r.png"
    argv = ["race", "--optimizers", "sgd", "--problems", "quadratic", "--steps", "5"]
    assert main([*argv, "--plot", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("race: --plot: cannot write")
    assert main([*argv, "--plot", str(tmp_path / "bare")]) == 0
    assert f"wrote {tmp_path / 'bare.png'}" in capsys.readouterr().out
    assert (tmp_path / "bare.png").exists()


def test_a_cache_dir_that_is_a_file_is_reported_in_one_line(tmp_path, monkeypatch, capsys):
    from gradx._cli import data as _data

    monkeypatch.setattr(_data, "_urlopen", lambda url, timeout=None: io.BytesIO(b"x"))
    (tmp_path / "file").write_text("")
    argv = ["--dataset", "mnist", "--cache-dir", str(tmp_path / "file"), "--plot", ""]
    assert _compare_main(argv) == 1
    err = capsys.readouterr().err
    assert "compare: --cache-dir: cannot write MNIST into" in err and "Traceback" not in err


def test_options_before_compare_are_refused(monkeypatch, capsys):
    seen = []
    fake = types.ModuleType("gradx._cli.compare")
    fake.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "gradx._cli.compare", fake)
    with pytest.raises(SystemExit) as exit_:
        main(["--bogus", "compare", "--epochs", "1"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    assert seen == []
