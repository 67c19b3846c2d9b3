"""The one progress reporter: rate and ETA, a redrawn line on a terminal, bounded plain lines elsewhere."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

import pytest

from pfascannet import progress as progress_lib
from pfascannet.workflow import Log

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Clock:
    """A hand-driven ``time.monotonic``."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(progress_lib.time, "monotonic", c)
    return c


def test_fmt_duration():
    assert progress_lib.fmt_duration(0) == "00:00"
    assert progress_lib.fmt_duration(75.4) == "01:15"
    assert progress_lib.fmt_duration(3 * 3600 + 61) == "3:01:01"
    assert progress_lib.fmt_duration(float("nan")) == "--:--"


def test_rate_and_eta_of_a_step_loop(clock):
    out = io.StringIO()
    p = progress_lib.Progress(100, label="train", unit="step", stream=out)
    clock.t += 5.0
    p.update(10, extra="loss 0.5")  # 10 steps in 5 s: 2 steps/s, 90 left: 45 s
    assert p.line() == "train: 10/100  10.0% 2.00 step/s ETA 00:45  loss 0.5"
    assert out.getvalue().splitlines() == [p.line()]


def test_resumed_items_count_but_not_in_the_rate(clock):
    p = progress_lib.Progress(100, stream=io.StringIO())
    p.skip(50)  # done by an earlier run
    clock.t += 10.0
    p.advance(10)
    assert p.done == 60 and p.rate() == pytest.approx(1.0) and p.eta_s() == pytest.approx(40.0)


def test_off_a_terminal_lines_come_at_a_bounded_rate(clock):
    out = io.StringIO()
    p = progress_lib.Progress(1000, stream=out, interval_s=5.0)
    for _ in range(999):
        clock.t += 0.01  # 10 s in all
        p.advance()
    p.advance()  # the last item always shows
    lines = out.getvalue().splitlines()
    assert 2 <= len(lines) <= 4 and "\r" not in out.getvalue()
    assert lines[-1].startswith("1000/1000 100.0%")


def test_on_a_terminal_one_line_is_redrawn_and_messages_go_below_it(clock):
    out = Terminal()
    p = progress_lib.Progress(10, stream=out)
    p.advance()
    clock.t += 1.0
    p.advance()
    p.warning("something   odd\nhere")
    p.advance()
    p.close()
    text = out.getvalue()
    assert text.count("\r\x1b[K") == 3
    assert "\nwarning: something odd here\n" in text and text.endswith("\n")


def test_messages_go_through_logging_without_a_stream(caplog):
    caplog.set_level(logging.INFO, logger="pfascannet")
    p = progress_lib.Progress(2, label="slides")
    p.advance()
    p.message("a message")
    p.warning("careful")
    p.error("broken")
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert levels[0][0] == logging.INFO and levels[0][1].startswith("slides: 1/2")
    assert levels[1:] == [(logging.INFO, "a message"), (logging.WARNING, "warning: careful"),
                          (logging.ERROR, "error: broken")]


def test_disabled_progress_still_shows_warnings():
    out = io.StringIO()
    p = progress_lib.Progress(2, stream=out, enabled=False)
    p.advance()
    p.message("quiet")
    p.warning("loud")
    assert out.getvalue() == "warning: loud\n"


def test_where_nothing_configured_logging_messages_are_plain_stderr_lines():
    code = ("from pfascannet.progress import Progress\n"
            "p = Progress(3, label='slides')\np.advance()\np.message('hello')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("slides: 1/3") and "ETA" in lines[0] and lines[1] == "hello"


def test_workflow_log_steps_and_counter(clock):
    out = io.StringIO()
    log = Log(stream=out, total_steps=2)
    log.begin("cohort")
    tick = log.counter(4, "slide")
    for k in range(4):
        clock.t += 1.0
        tick(f"s{k}")
    log.end()
    lines = out.getvalue().splitlines()
    assert lines[0] == "[1/2] cohort"
    assert lines[1].strip().startswith("slide: 1/4") and "ETA 00:03" in lines[1] and lines[1].endswith("s0")
    assert lines[-2].strip().startswith("slide: 4/4") and lines[-1].strip().startswith("done in")
