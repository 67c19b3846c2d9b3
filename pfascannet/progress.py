"""One progress reporter (rate, ETA) and the package's logger, for scans, training, the workflow and the demo.

Where the output goes:

- On a terminal, the progress line is redrawn in place on stderr (carriage
  return), at most every ``TTY_INTERVAL_S`` seconds.
- Anywhere else (a log file, a pipe, a batch job), a plain progress line goes
  through ``logging`` at most every ``interval_s`` seconds, so logs stay short.
- Messages and warnings go through ``logging`` (the ``pfascannet`` logger):
  plain lines on stderr.  The command-line mains make them plain
  (``use_plain_output``) unless ``--verbosity`` (or ``--log_dir``) or
  ``PFASCANNET_DEBUG=1`` is given; then they go through absl's handler, with
  its prefix, and honour ``--verbosity`` and ``--log_dir``.  Where nothing
  configured logging (``pfascannet demo``, a script), ``LOGGER`` shows INFO
  and above on stderr as plain lines.
- ``stream=``: everything (line and messages) written to that stream instead,
  plain lines, for callers that collect the output (tests, notebooks).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Optional, TextIO

LOGGER = logging.getLogger("pfascannet")
"""The package's logger; modules log through it (or a child) rather than ``print``."""

TTY_INTERVAL_S = 0.2
"""Seconds between redraws of a terminal's progress line."""


class _StderrHandler(logging.StreamHandler):
    """Plain ``message`` lines on whatever ``sys.stderr`` is when a record is emitted."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # logging.StreamHandler.__init__ assigns it
        pass


def ensure_logging() -> None:
    """Shows the package's INFO messages on stderr when nothing configured logging (no handler anywhere).

    Under an absl main (its handler on the root logger) or pytest (its
    capture handlers) this does nothing: their settings rule.
    """
    if LOGGER.handlers or logging.getLogger().handlers:
        return
    LOGGER.addHandler(_StderrHandler())
    if LOGGER.level == logging.NOTSET:
        LOGGER.setLevel(logging.INFO)


def use_plain_output() -> None:
    """The package's messages and progress lines as plain lines on stderr, not through absl's handler.

    What the command-line mains do unless ``--verbosity`` or ``PFASCANNET_DEBUG``
    asks for absl's logging (``pfascannet.quiet``): without it, an absl main
    would prefix every line with ``I1202 18:46:11.150813 140177 progress.py:178]``.
    """
    if not any(isinstance(h, _StderrHandler) for h in LOGGER.handlers):
        LOGGER.addHandler(_StderrHandler())
    LOGGER.propagate = False
    if LOGGER.level == logging.NOTSET:
        LOGGER.setLevel(logging.INFO)


def fmt_duration(seconds: float) -> str:
    """``mm:ss`` or ``h:mm:ss``; ``--:--`` when unknown (NaN, infinite)."""
    if not math.isfinite(seconds):
        return "--:--"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Progress of ``total`` items: count, rate, ETA, and messages (see the module docstring for where they go).

    A step loop calls ``update(step, total, extra)`` with absolute positions;
    an item loop calls ``advance(n)``.  ``skip(n)`` counts items done earlier
    (resumed) without counting them in the rate.  Subclasses with their own
    line override ``line()`` and call ``show()``.

    Args:
      total: items to do (None: unknown; no percentage or ETA).
      label: what is counted, at the start of the line.
      unit: the items' name in the rate (``ROI``, ``step``, ``slide``).
      stream: write here instead of the terminal line / logging (see module docstring).
      enabled: False: no progress lines; messages with ``always=True`` still go out.
      interval_s: least seconds between two progress lines off a terminal.
      logger: where messages go (default ``LOGGER``).
    """

    def __init__(self, total: Optional[int] = None, *, label: str = "", unit: str = "it",
                 stream: Optional[TextIO] = None, enabled: bool = True, interval_s: float = 5.0,
                 logger: Optional[logging.Logger] = None):
        self.total = total
        self.label = label
        self.unit = unit
        self.stream = stream
        self.enabled = enabled
        self.logger = logger or LOGGER
        # A terminal: the explicit stream's, else stderr's.
        out = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.interval_s = TTY_INTERVAL_S if self.tty else interval_s
        self.done = 0
        self.extra = ""
        self._rate_n = 0
        self._t0 = time.monotonic()
        self._last = -math.inf
        self._line_open = False
        if stream is None:
            ensure_logging()

    # ------------------------------------------------------------------ counting

    def update(self, done: int, total: Optional[int] = None, extra: str = "", force: bool = False) -> None:
        """Sets the position to ``done`` (of ``total``, if given) and shows the line when due."""
        if total is not None:
            self.total = total
        self._rate_n += max(0, done - self.done)
        self.done = done
        self.extra = extra
        self.show(force=force or (self.total is not None and done >= self.total))

    def advance(self, n: int = 1, extra: str = "") -> None:
        """``n`` more items done now."""
        self.update(self.done + n, extra=extra)

    def skip(self, n: int) -> None:
        """``n`` items done by an earlier run: counted, but not in the rate."""
        if n:
            self.done += n
            self.show(force=True)

    def rate(self) -> float:
        """Items per second since the start (NaN before the first)."""
        t = time.monotonic() - self._t0
        return self._rate_n / t if self._rate_n and t > 0 else float("nan")

    def eta_s(self) -> float:
        rate = self.rate()
        if self.total is None or not rate > 0:
            return float("nan")
        return max(self.total - self.done, 0) / rate

    def elapsed_s(self) -> float:
        return time.monotonic() - self._t0

    def line(self) -> str:
        rate = self.rate()
        rate_text = f"{rate:.2f}" if rate > 0 else "--"
        if self.total is not None:
            pct = 100.0 * self.done / self.total if self.total else 100.0
            count = f"{self.done}/{self.total} {pct:5.1f}%"
        else:
            count = str(self.done)
        head = f"{self.label}: " if self.label else ""
        tail = f"  {self.extra}" if self.extra else ""
        return f"{head}{count} {rate_text} {self.unit}/s ETA {fmt_duration(self.eta_s())}{tail}"

    # ------------------------------------------------------------------ output

    def show(self, force: bool = False) -> None:
        """Writes ``line()`` if enabled and at least ``interval_s`` passed since the last (or ``force``)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        text = self.line()
        if self.tty:
            out = self.stream if self.stream is not None else sys.stderr
            out.write("\r\x1b[K" + text)
            out.flush()
            self._line_open = True
        elif self.stream is not None:
            self.stream.write(text + "\n")
            self.stream.flush()
        else:
            self.logger.info(text)

    def close(self) -> None:
        """Ends a terminal's progress line (the next output starts on a fresh line)."""
        self._end_line()

    def _end_line(self) -> None:
        if self._line_open:
            out = self.stream if self.stream is not None else sys.stderr
            out.write("\n")
            out.flush()
            self._line_open = False
            self._last = -math.inf  # the line comes back at the next update

    def message(self, text: str, always: bool = False, level: int = logging.INFO) -> None:
        """A message line (shown when enabled, or ``always``), below the progress line."""
        if not (self.enabled or always):
            return
        self._end_line()
        if self.stream is not None:
            self.stream.write(text + "\n")
            self.stream.flush()
        else:
            self.logger.log(level, text)

    def warning(self, text: str) -> None:
        """One ``warning: ...`` line, always shown."""
        self.message("warning: " + " ".join(str(text).split()), always=True, level=logging.WARNING)

    def error(self, text: str) -> None:
        """One ``error: ...`` line, always shown."""
        self.message("error: " + " ".join(str(text).split()), always=True, level=logging.ERROR)
