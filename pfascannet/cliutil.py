"""Shared plumbing for the absl command-line mains.

``run_main(main)`` replaces ``absl.app.run(main)``: a user error (a
``PfaError``, a missing or unreadable file, a bad, unknown or missing flag)
becomes a single ``error: ...`` line on stderr and exit status 2, never a
traceback.  Set ``PFASCANNET_DEBUG=1`` to see the traceback anyway.

The exit statuses of every command (README.md): 0 all done; 1 some items
(slides, ...) failed, each named on its own line, the others done; 2 bad
input or flags, before any work; 130 interrupted (rerun to resume).

Importing this module turns TensorFlow's start-up noise off (``pfascannet.quiet``),
and ``run_main`` makes progress lines plain, unless ``--verbosity`` or
``PFASCANNET_DEBUG=1`` asks for absl's logging.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable, NoReturn

from absl import app, flags

from pfascannet import quiet
from pfascannet.errors import PfaError

# Before any stage module imports TensorFlow: every main imports this module first.
quiet.quiet_startup()

USER_ERRORS = (PfaError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def fail(message: str, status: int = 2, at_once: bool = False) -> NoReturn:
    """Prints ``error: message`` on one line and exits.

    ``at_once``: flush the output and end the process without the
    interpreter's teardown (``os._exit``), for an error after which that
    teardown can hang (TensorFlow's collectives waiting on a dead worker:
    ``training.distribute.WorkerLostError``).  Only for errors raised where
    every output is already written.
    """
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    if at_once:
        logging.shutdown()  # flushes absl's and every other handler
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def guarded(fn: Callable) -> Callable:
    """Wraps ``fn`` so user errors exit with one line instead of a traceback."""

    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            if os.environ.get("PFASCANNET_DEBUG"):
                raise
            fail(str(exc) or type(exc).__name__, at_once=getattr(exc, "exit_at_once", False))
        except KeyboardInterrupt:
            fail("interrupted; rerun the same command to resume", status=130)

    wrapper.__name__ = getattr(fn, "__name__", "main")
    wrapper.__doc__ = fn.__doc__
    return wrapper


def _parse_flags(argv):
    # absl's own parser exits 1 with a "FATAL Flags parsing error" on a bad or
    # missing flag; in this project a bad flag is bad input: one line, exit 2.
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as exc:
        fail(f"{exc} (--helpfull lists the flags)")
    except SystemExit as exc:
        # absl's --help, --helpshort, --helpfull and --helpxml print and exit 1;
        # asking for help is not a failure (README: 1 means some item failed).
        sys.exit(0 if exc.code == 1 else exc.code)
    if len(rest) > 1:  # every stage takes its inputs as flags
        fail(f"unexpected argument(s): {' '.join(rest[1:])}; all inputs are flags (--helpfull lists them)")
    return rest


def run_main(main: Callable) -> None:
    """``absl.app.run`` with bad flags and user errors reported on one line (exit 2).

    ``main`` may live in another module than ``__main__``: a stage of
    ``pfascannet.stages`` run by the ``pfascannet`` command or by a thin
    script in ``experiments/``, ``eval/`` or ``data_prep/``.  Then ``--help``
    prints that module's docstring and flags (absl would print ``__main__``'s),
    and the module's ``prepare_argv(argv)``, if it has one, rewrites the
    command line before absl parses it.
    """
    stage = sys.modules.get(getattr(main, "__module__", "__main__"))
    if stage is not None and stage is not sys.modules["__main__"]:
        for flag in flags.FLAGS.get_key_flags_for_module(stage.__name__):
            flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
        sys.modules["__main__"].__doc__ = stage.__doc__
        prepare_argv = getattr(stage, "prepare_argv", None)
        if prepare_argv is not None:
            sys.argv = prepare_argv(sys.argv)
    app.run(guarded(_quiet_logs(main)), flags_parser=_parse_flags)


def _quiet_logs(main: Callable) -> Callable:
    """``main`` with plain progress lines and TensorFlow's Python INFO logs off, unless verbosity was asked for.

    Runs after absl parsed the flags and installed its handler (``pfascannet.quiet``).
    """

    def wrapper(argv):
        if not quiet.verbose_requested():
            from absl import logging as absl_logging  # noqa: PLC0415

            from pfascannet import progress  # noqa: PLC0415

            progress.use_plain_output()
            absl_logging.set_verbosity(absl_logging.WARNING)  # TensorFlow's "Assets written to ..." and such
        return main(argv)

    wrapper.__name__ = getattr(main, "__name__", "main")
    wrapper.__doc__ = main.__doc__
    return wrapper
