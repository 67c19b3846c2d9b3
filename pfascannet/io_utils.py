"""Atomic output, temporary files nobody else picks up, and per-item locks.

Every file the project writes appears whole or not at all: it is written
to a temporary name beside the target and renamed onto it.  Temporary names
start with a dot and carry ``.tmp-`` (``.name.tmp-XXXXXXXX``, a scratch
folder holding the file being written), so no output glob (``*.npy``), no
slide lister and no ``ls`` picks one up; the writer holds an ``flock`` on
the folder while it writes, so
:func:`remove_stale_temps` (run by the next run of the same stage) deletes
exactly the leftovers of killed processes and never a live writer's file.

:class:`FileLock` is the per-slide lock of the scanner: a non-blocking
``flock`` on a small file, released by the kernel when its process dies
(even by SIGKILL), so a lock can never go stale.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import tempfile
from typing import Any, Iterator, Optional

import numpy as np

TEMP_MARK = ".tmp-"
"""What every temporary name carries (after a leading dot)."""

# Ours: ".name.tmp-XXXXXXXX[.ext]".  Older versions left "name.tmp-XXXXXXXX[.ext]"
# files and ".pyramid-XXXXXXXX" folders; they are cleaned up too.
_TEMP_RE = re.compile(r"^(\.?.+\.tmp-[A-Za-z0-9_]{8}|\.pyramid-[A-Za-z0-9_]{8})")


def temp_prefix(path: str | os.PathLike) -> str:
    """The prefix of temporary names beside ``path``: ``.<basename>.tmp-``."""
    return "." + os.path.basename(os.fspath(path)) + TEMP_MARK


def is_temp_name(name: str) -> bool:
    """True for the names :func:`atomic_path`, :func:`temp_dir` (and older versions) give temporaries."""
    return bool(_TEMP_RE.match(os.path.basename(name)))


def _lock_fd(path: str, directory: bool = False) -> int:
    """An fd of ``path`` holding an exclusive flock (raises BlockingIOError if another holds it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY if directory else os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[str]:
    """Yields a temporary path beside ``path``; renames it onto ``path`` on success.

    The temporary file lies in a scratch folder ``.<basename>.tmp-XXXXXXXX``
    (:func:`temp_dir`): hidden, and locked while in use (see the module
    docstring).  The folder, not the file, carries the lock, because some
    writers lock the file they write themselves (HDF5 ``flock``s its file, so
    a lock of ours on it made every ``.weights.h5`` write fail).  ``suffix``
    keeps an extension on the file for writers that choose their format from
    it (``.png``, ``.tif``, ``.weights.h5``).
    """
    path = os.fspath(path)
    name = os.path.basename(path)
    if suffix and not name.endswith(suffix):
        name += suffix
    with temp_dir(path) as scratch:
        tmp = os.path.join(scratch, name)
        yield tmp
        if not os.path.exists(tmp):
            raise FileNotFoundError(f"{path}: the writer produced no file")
        # Files get the usual permissions (umask), as a plain open() would give.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)


@contextlib.contextmanager
def temp_dir(beside: str | os.PathLike) -> Iterator[str]:
    """A scratch folder ``.<basename>.tmp-XXXXXXXX`` beside ``beside``, locked while in use, removed after."""
    beside = os.fspath(beside)
    parent = os.path.dirname(os.path.abspath(beside))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=temp_prefix(beside), dir=parent)
    fd = None
    with contextlib.suppress(OSError):
        fd = _lock_fd(tmp, directory=True)
    try:
        yield tmp
    finally:
        if fd is not None:
            os.close(fd)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary folder beside ``path``; it replaces ``path`` on success (e.g. a SavedModel)."""
    path = os.fspath(path)
    with temp_dir(path) as tmp:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it owner-only
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
        os.replace(tmp, path)


def remove_stale_temps(directory: str | os.PathLike, prefix: str = "") -> list[str]:
    """Deletes the temporaries of killed writers in ``directory`` (not recursive).

    A temporary another live process is writing is locked and stays.  Args:
    ``prefix``: only names starting with it (e.g. ``"." + slide``).
    Returns the paths removed.
    """
    directory = os.fspath(directory)
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for name in names:
        if not name.startswith(prefix) or not is_temp_name(name):
            continue
        full = os.path.join(directory, name)
        is_dir = os.path.isdir(full) and not os.path.islink(full)
        try:
            fd = _lock_fd(full, directory=is_dir)
        except BlockingIOError:
            continue  # a live writer holds it
        except FileNotFoundError:
            continue  # renamed or removed meanwhile
        except OSError as exc:
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF):
                fd = None  # no flock here: an old leftover is still a leftover
            else:
                continue
        try:
            if is_dir:
                shutil.rmtree(full, ignore_errors=True)
            else:
                os.remove(full)
            removed.append(full)
        except FileNotFoundError:
            pass
        finally:
            if fd is not None:
                os.close(fd)
    return removed


class FileLock:
    """A non-blocking exclusive lock on ``path`` (``fcntl.flock``), released when its process dies.

    Two ``FileLock`` objects on one path exclude each other even in one
    process (the lock belongs to the open file).  While held, the file says
    who holds it (``pid@host``) for other processes' messages.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._fd: Optional[int] = None

    def acquire(self, blocking: bool = False) -> bool:
        """Takes the lock; False if another holder has it and ``blocking`` is False."""
        if self._fd is not None:
            return True
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}@{socket.gethostname()}\n".encode(), 0)
        return True

    def release(self) -> None:
        """Lets the lock go (the file stays: deleting it would race with a waiting process)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> str:
        """Who holds the lock, as its file says (``pid@host``), or ``"another process"``."""
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read().strip()
        except OSError:
            text = ""
        return f"process {text}" if text else "another process"

    def __enter__(self) -> "FileLock":
        self.acquire(blocking=True)
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes ``obj`` as indented JSON atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Saves ``array`` as ``.npy`` atomically."""
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
