"""The ``pfascannet`` command: every stage listed, a stage's --help, and one-line errors with status 2.

The console script that pip installs (``pfascannet=pfascannet.cli:main``) and
``python -m pfascannet.cli`` are the same entry point; the absl scripts in
``experiments/``, ``eval/`` and ``data_prep/`` run the same mains.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

from pfascannet import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = [sys.executable, "-m", "pfascannet.cli"]


def _run(cmd, tmp_path):
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)


def _one_error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "FATAL" not in proc.stderr
    return lines[0]


def test_every_stage_is_listed_and_the_listing_imports_no_stage(tmp_path):
    expected = {"cohort", "tfrecords", "train", "export", "check-equivalence", "scan", "lesions", "froc", "auc",
                "pn-stage", "kappa", "table1", "eval-heldout", "demo", "version", "view"}
    assert set(cli.STAGES) | set(cli.BUILTINS) == expected
    proc = _run([*MODULE, "--help"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    listed = {line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")}
    assert listed == expected
    # absl flags are global: the listing must not import (and so define the flags of) any stage.
    probe = ("import sys; from pfascannet import cli; cli.main(['--help']); "
             "print(sorted(m for m in sys.modules if m.startswith('pfascannet.stages.')))")
    proc = _run([sys.executable, "-c", probe], tmp_path)
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == "[]", proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.mark.parametrize("stage", sorted(cli.STAGES))
def test_every_stage_module_has_a_main(stage):
    module = f"pfascannet.stages.{cli.STAGES[stage][0]}"
    assert importlib.util.find_spec(module) is not None, module
    with open(importlib.util.find_spec(module).origin, encoding="utf-8") as f:
        assert "\ndef main(argv" in f.read()


@pytest.mark.slow  # child processes: the full suite runs it, the quick subset does not
def test_stage_help_is_the_scripts_help_and_exits_0(tmp_path):
    via_cli = _run([*MODULE, "froc", "--help"], tmp_path)
    via_script = _run([sys.executable, os.path.join(REPO, "eval", "froc.py"), "--help"], tmp_path)
    assert via_cli.returncode == 0 and via_script.returncode == 0, via_cli.stderr[-2000:] + via_script.stderr[-2000:]
    assert via_cli.stdout.startswith("Scores Camelyon16 lesion CSVs")
    assert "--lesions_dir" in via_cli.stdout and "--masks_dir" in via_cli.stdout
    # The same docstring and flags; only the program name in the flags' heading differs.
    program = os.path.join(REPO, "eval", "froc.py")
    assert via_cli.stdout == via_script.stdout.replace(f"\n{program}:\n", "\npfascannet froc:\n")


@pytest.mark.slow  # child processes: the full suite runs it, the quick subset does not
def test_console_script_runs_a_stage(tmp_path):
    exe = shutil.which("pfascannet", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("no pfascannet console script beside this Python (pip install -e . installs it)")
    proc = _run([exe, "kappa", "--help"], tmp_path)
    assert proc.returncode == 0 and "--submission" in proc.stdout, proc.stderr[-2000:]
    assert "nosuchflag" in _one_error_line(_run([exe, "kappa", "--nosuchflag"], tmp_path))


@pytest.mark.slow  # child processes: the full suite runs it, the quick subset does not
@pytest.mark.parametrize(
    "args, says",
    [
        (["froc", "--nosuchflag"], "nosuchflag"),
        (["cohort"], "--out"),  # a required flag
        (["cohort", "--out=C", "--quality=0"], "quality"),
        (["nosuchstage"], "nosuchstage"),
        (["demo", "--nosuchflag"], "nosuchflag"),
        # scan's bare --ray (a local Ray) is accepted, so the error is the threshold's
        (["scan", "--ray", "--model=m", "--slides=s", "--out=o", "--threshold=nan"], "threshold"),
        (["cohort", "--out=C", "extra.txt"], "unexpected argument(s): extra.txt"),  # inputs are flags
        (["cohort", "--out=C", "--patients=1", "--node_labels=itc,tumour,negative,negative,negative"], "node_labels"),
        (["cohort", "--out=C", "--patients=2", "--node_labels=itc,negative,negative,negative,negative"], "node_labels"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, says, tmp_path):
    line = _one_error_line(_run([*MODULE, *args], tmp_path))
    assert says in line
    assert not os.path.exists(tmp_path / "C")


def test_no_stage_prints_the_listing_and_exits_2(tmp_path):
    proc = _run(MODULE, tmp_path)
    assert proc.returncode == 2 and "stages:" in proc.stderr


@pytest.mark.slow  # writes a small cohort in a child process
def test_cohort_node_labels_flag_sets_each_patients_nodes(tmp_path):
    proc = _run([*MODULE, "cohort", "--out=C", "--patients=2", "--nodes_per_patient=2", "--slide_size=2048",
                 "--workers=1", "--node_labels=itc,negative; negative,itc"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / "C" / "slides.csv") as f:
        labels = {row["slide"]: row["label"] for row in csv.DictReader(f)}
    assert labels == {"patient_000_node_0": "itc", "patient_000_node_1": "negative",
                      "patient_001_node_0": "negative", "patient_001_node_1": "itc"}
