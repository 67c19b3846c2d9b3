"""Quiet by default: no TensorFlow / absl start-up lines on the user's terminal.

Importing TensorFlow prints, from C++, before anything in Python can filter it:
"All log messages before absl::InitializeLog() is called are written to
STDERR", the oneDNN notice, "Could not find cuda drivers", the CPU-feature
notice, and on a machine without a GPU a "failed call to cuInit" error.  In
TensorFlow 2.21 ``TF_CPP_MIN_LOG_LEVEL`` filters the later C++ messages but not
those printed while the libraries load (TensorFlow issue #100442), so
``quiet_startup`` does two things, before TensorFlow is first imported:

* sets ``TF_CPP_MIN_LOG_LEVEL=3`` (unless the user set it): no C++ INFO, WARNING
  or ERROR lines after the import (the cuInit error comes later, at device set-up);
* points file descriptor 2 at ``/dev/null`` for the duration of
  ``import tensorflow`` only (an import hook); a Python exception raised by the
  import is still reported, after stderr is back.

It is called once, when ``pfascannet.cliutil`` is imported: the ``pfascannet``
command and every script in ``experiments/``, ``eval/`` and ``data_prep/``
import it before any stage module.  ``--verbosity`` (absl's flag, any value;
also ``--log_dir``, ``--logtostderr``) or ``PFASCANNET_DEBUG=1`` turns all of this off, and the progress lines then
go through absl's logging with its prefix (``progress.use_plain_output`` is
what makes them plain otherwise).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import sys
from typing import Iterator, Optional, Sequence

_QUIET_MODULES = ("tensorflow",)


def verbose_requested(argv: Optional[Sequence[str]] = None) -> bool:
    """True when ``PFASCANNET_DEBUG`` is set (not ``0``) or the command line gives absl's ``--verbosity``/``-v``."""
    if os.environ.get("PFASCANNET_DEBUG", "") not in ("", "0"):
        return True
    for arg in sys.argv[1:] if argv is None else argv:
        if arg == "--":
            break
        name = arg.split("=", 1)[0]
        if name in ("--verbosity", "-verbosity", "--v", "-v", "--log_dir", "--logtostderr", "--alsologtostderr"):
            return True
    return False


@contextlib.contextmanager
def stderr_to_devnull() -> Iterator[None]:
    """File descriptor 2 (what C++ writes to) points at /dev/null inside the block."""
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError, OSError):
        pass
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all: nothing to hide
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _QuietLoader(importlib.abc.Loader):
    """Runs another loader's ``exec_module`` with stderr silenced."""

    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        with stderr_to_devnull():
            self._inner.exec_module(module)

    def __getattr__(self, name):  # resource readers, get_filename, ... of the real loader
        return getattr(self._inner, name)


class _QuietImportFinder(importlib.abc.MetaPathFinder):
    """Wraps the first import of each of ``_QUIET_MODULES`` in ``stderr_to_devnull``."""

    def find_spec(self, name, path=None, target=None):
        if name not in _QUIET_MODULES:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # once: the real finders find the module
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_startup(argv: Optional[Sequence[str]] = None) -> bool:
    """Silences TensorFlow's start-up unless verbosity was asked for (module docstring).

    Returns:
      True when quiet mode is on.
    """
    if verbose_requested(argv):
        return False
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not any(m in sys.modules for m in _QUIET_MODULES) and not any(
            isinstance(f, _QuietImportFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImportFinder())
    return True
