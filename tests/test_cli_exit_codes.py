"""One exit-status convention for every command (README): 0 done, 1 some items failed, 2 bad input or flags.

A bad, unknown or missing flag is bad input like any other: one ``error:``
line and status 2 (absl alone would print "FATAL Flags parsing error" and exit 1).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "script, args",
    [
        ("experiments/scan.py", ["--threshold=abc"]),
        ("experiments/scan.py", ["--nosuchflag"]),
        ("experiments/scan.py", ["--model=m", "--slides=s", "--out=o", "--threshold=nan"]),
        ("experiments/export.py", ["--alpha=x"]),
        ("data_prep/make_synthetic_cohort.py", []),  # --out is required
        ("data_prep/make_synthetic_cohort.py", ["--out=C", "--workers=-1"]),
        ("data_prep/make_synthetic_cohort.py", ["--out=C", "--quality=0"]),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(script, args, tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(REPO, script), *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "FATAL" not in proc.stderr
    assert not os.path.exists(tmp_path / "C")
