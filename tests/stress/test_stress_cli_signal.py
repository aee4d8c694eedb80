"""Stress test: SIGINT (or SIGTERM) to an unmodified ``deepgmm`` command at a random moment, many times.

Marked ``stress``: deselected by the default test command. Run it with::

    python -m pytest -m stress tests/stress -q                                   # small defaults
    DEEPGMM_STRESS_TRIALS=150 DEEPGMM_STRESS_WINDOW=1.3 python -m pytest -m stress tests/stress/test_stress_cli_signal.py -q
    DEEPGMM_STRESS_COMMANDS=train,table1 DEEPGMM_STRESS_SIGNAL=TERM DEEPGMM_STRESS_TRIALS=60 python -m pytest -m stress tests/stress/test_stress_cli_signal.py -q

Each trial starts ``python -m deepgmm COMMAND ...`` in a process group of its own on small
synthetic data (``_cli_cases.py``), sleeps a random time, sends the signal to the group (as a
terminal's Ctrl-C or ``kill -TERM -PGID`` would) and waits for it. A trial is **bad** when

* it ends with a status other than 0 (finished first), 130/143 (interrupted: the one-line
  message) or -2/-15 (the signal landed before Python's handler was set, or during shutdown);
* or it leaves a temporary (``.*.tmp*``), staging (``.*.staging-*``), moved-aside (``.*.old-*``)
  or lock entry anywhere;
* or what it left is not what the command promises (``Scenario.left``);
* or the documented way on does not end with the result of an uninterrupted run (the
  *reference*, run first): ``--resume`` for ``train`` (``--overwrite`` where it stopped before its
  first checkpoint) and ``myops table1``/``table2``; a plain rerun for ``segment`` and
  ``predict``, whose output folder is all or nothing.

Commands (``DEEPGMM_STRESS_COMMANDS``, comma-separated, or ``all``; default ``segment``):
``segment`` (GMM, K=3, a 2-channel image), ``segment-deepsvg`` (deepSVG's defaults),
``segment-data`` (SVGMM on a cohort of 3), ``train`` (a tiny U-Net, 6 epochs, ``--deterministic``:
the resumed weights and log equal the reference's bit for bit), ``train-default`` (without
``--deterministic``), ``predict`` (a tiny model on 3 cases), ``predict-image`` (on one case's
files), ``table1`` (``myops table1 --methods gmm`` on 2 synthetic patients), ``table1-jobs2`` (the
same with ``--jobs 2``: Ctrl-C while worker processes run), ``table2``
(``myops table2`` trained on one synthetic patient for 3 epochs).

Other knobs (environment variables): ``DEEPGMM_STRESS_TRIALS`` (default 5),
``DEEPGMM_STRESS_SIGNAL`` (``INT`` or ``TERM``, default ``INT``), ``DEEPGMM_STRESS_WINDOW`` (the
signal falls uniformly in ``[0.05, window]`` s; default: the reference run's wall time, so that
every phase is hit), ``DEEPGMM_STRESS_SEED`` (default 0), ``DEEPGMM_STRESS_SRC`` (the package
source folder to run; default this checkout's ``src/``; another one compares versions).
"""

from __future__ import annotations

import collections
import os
import random
import signal
from pathlib import Path

import pytest

from _cli_cases import SCENARIOS, run_cli

pytestmark = [pytest.mark.stress, pytest.mark.timeout(0)]  # long by design: no per-test limit

ROOT = Path(__file__).resolve().parents[2]


def _commands() -> list[str]:
    value = os.environ.get("DEEPGMM_STRESS_COMMANDS", "segment")
    return list(SCENARIOS) if value == "all" else [c.strip() for c in value.split(",") if c.strip()]


def _leftovers(root: Path) -> list[str]:
    """Temporary, staging, moved-aside or lock entries anywhere under ``root``."""
    found = []
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            if ".tmp" in name or ".staging-" in name or ".old-" in name or name == ".lock":
                found.append(os.path.relpath(os.path.join(folder, name), root))
    return sorted(found)


@pytest.mark.parametrize("command", _commands())
def test_signal_at_a_random_moment(command: str, tmp_path: Path) -> None:
    assert command in SCENARIOS, f"DEEPGMM_STRESS_COMMANDS: unknown command {command!r}; known: {sorted(SCENARIOS)}"
    trials = int(os.environ.get("DEEPGMM_STRESS_TRIALS", "5"))
    name = os.environ.get("DEEPGMM_STRESS_SIGNAL", "INT").upper()
    assert name in ("INT", "TERM"), f"DEEPGMM_STRESS_SIGNAL must be INT or TERM, got {name!r}"
    window_env = os.environ.get("DEEPGMM_STRESS_WINDOW")
    seed = int(os.environ.get("DEEPGMM_STRESS_SEED", "0"))
    src = Path(os.environ.get("DEEPGMM_STRESS_SRC", ROOT / "src")).resolve()

    sig = getattr(signal, f"SIG{name}")
    fine = {0, 130 if sig == signal.SIGINT else 143, -sig}
    rng = random.Random(seed)
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1")
    outcomes: collections.Counter = collections.Counter()
    bad: list[str] = []
    scenario = SCENARIOS[command](tmp_path, seed, env)
    status, err, wall = run_cli(scenario.argv(tmp_path / "reference"), env)
    assert status == 0, f"the reference run failed (status {status}): {err[-2000:]}"
    reference = scenario.result(tmp_path / "reference")
    window = float(window_env) if window_env else wall
    print(f"{command}: reference run {wall:.2f} s; signal {name} in [0.05, {window:.2f}] s")
    for trial in range(trials):
        trial_dir = tmp_path / f"trial{trial}"
        trial_dir.mkdir()
        out = trial_dir / "out"
        delay = rng.uniform(0.05, window)
        status, err, _ = run_cli(scenario.argv(out), env, sig, delay)
        problems = []
        if status not in fine:
            problems.append(f"status {status}")
        problems += [f"left {p}" for p in _leftovers(trial_dir)]
        problems += scenario.left(out, status)
        how = "finished" if status == 0 else "output" if out.exists() else "none"
        if not problems:
            on = scenario.way_on(out)
            if on is not None:
                how += ", went on"
                s2, err2, _ = run_cli(on, env)
                if s2:
                    problems.append(f"the way on ({' '.join(on[-3:])}) failed, status {s2}: {err2.strip()[-300:]}")
                problems += [f"left after the way on: {p}" for p in _leftovers(trial_dir)]
            if not problems and scenario.result(out) != reference:
                problems.append("the final result differs from the reference run's")
        outcomes[(status, how)] += 1
        if problems:
            bad.append(f"trial {trial}: signal after {delay:.2f} s, status {status}: {'; '.join(problems)}\n"
                       f"  {err.strip()[-400:]}")
    for (status, how), count in sorted(outcomes.items()):
        print(f"status {status:4d}, {how}: {count}")
    print(f"{len(bad)} bad of {trials}")
    assert not bad, "\n".join(bad)
