"""Shared plumbing for the absl command-line mains.

``run_main(main)`` replaces ``absl.app.run(main)``: a user error (a
``PfaError``, a missing or unreadable file, a bad flag value) becomes a single
``error: ...`` line on stderr and exit status 2, never a traceback.  Set
``PFASCANNET_DEBUG=1`` to see the traceback anyway.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, NoReturn

from pfascannet.errors import PfaError

USER_ERRORS = (PfaError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def fail(message: str, status: int = 2) -> NoReturn:
    """Prints ``error: message`` on one line and exits."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(status)


def guarded(fn: Callable) -> Callable:
    """Wraps ``fn`` so user errors exit with one line instead of a traceback."""

    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            if os.environ.get("PFASCANNET_DEBUG"):
                raise
            fail(str(exc) or type(exc).__name__)
        except KeyboardInterrupt:
            fail("interrupted; rerun the same command to resume", status=130)

    wrapper.__name__ = getattr(fn, "__name__", "main")
    wrapper.__doc__ = fn.__doc__
    return wrapper


def run_main(main: Callable) -> None:
    """``absl.app.run`` with user errors reported on one line (exit 2)."""
    from absl import app  # noqa: PLC0415

    app.run(guarded(main))
