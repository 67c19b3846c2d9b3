"""Atomic output, temporary files nobody else picks up, and per-item locks.

Every file the project writes appears whole or not at all: it is written
to a temporary name beside the target and renamed onto it.  Temporary names
start with a dot and carry ``.tmp-`` (``.name.tmp-XXXXXXXX``, a scratch
folder holding the file being written), so no output glob (``*.npy``), no
slide lister and no ``ls`` picks one up; the writer holds an ``flock`` on
the folder's owner file (``OWNER_FILE``, opened for writing: on NFS, whose
clients emulate ``flock`` with byte-range locks, a lock of a file opened
read-only fails with EBADF) while it writes, so :func:`remove_stale_temps`
(run by the next run of the same stage) deletes exactly the leftovers of
killed processes and never a live writer's file.  Where no lock can be
tested at all, a temporary is removed only if its owner file names a
process of this host that is gone.

:class:`FileLock` is the per-slide lock of the scanner: a non-blocking
``flock`` on a small file, released by the kernel when its process dies
(even by SIGKILL), so a lock can never go stale.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import socket
import tempfile
import time
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


OWNER_FILE = ".owner"
"""The file inside a scratch folder whose lock says its writer lives (content: ``pid@host``)."""

OWNERLESS_GRACE_S = 60.0
"""An older version's scratch folder (no owner file) whose own lock cannot be tested (NFS) is left this long."""


def _flocked_fd(path: str, open_flags: int) -> int:
    """An fd of ``path`` holding an exclusive flock (BlockingIOError if another holds it)."""
    fd = os.open(path, open_flags)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lock_fd(path: str) -> int:
    """An fd of ``path``, opened for writing (what NFS's lock emulation needs), holding an exclusive flock."""
    return _flocked_fd(path, os.O_RDWR)


def _owner_id() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def _owner_gone(owner_path: str) -> bool:
    """True only if the owner file names a process of this host that no longer exists."""
    try:
        with open(owner_path, encoding="utf-8") as f:
            pid, _, host = f.read().strip().partition("@")
        pid = int(pid)
    except (OSError, ValueError):
        return False
    if host != socket.gethostname() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # EPERM: it exists
    return False


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
    # Made under a name no cleaner touches, named a temporary once its owner
    # file is locked: a cleaner never sees a live scratch folder without one.
    new = tempfile.mkdtemp(prefix="." + os.path.basename(beside) + ".new-", dir=parent)
    fd = os.open(os.path.join(new, OWNER_FILE), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
    tmp = new
    try:
        os.write(fd, (_owner_id() + "\n").encode())
        with contextlib.suppress(OSError):
            # Where locks cannot be had, the pid@host above still tells a
            # cleaner on this host that the owner lives.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        tmp = os.path.join(parent, temp_prefix(beside) + new.rsplit(".new-", 1)[1])
        os.rename(new, tmp)
        yield tmp
    finally:
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
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(tmp, OWNER_FILE))  # ours, not the writer's (its lock stays until we close)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
        os.replace(tmp, path)


def remove_stale_temps(directory: str | os.PathLike, prefix: str = "") -> list[str]:
    """Deletes the temporaries of killed writers in ``directory`` (not recursive).

    A temporary another live process is writing is locked and stays; so
    does one whose owner cannot be told dead (no lock can be tested and its
    owner file names another host or a live process; a folder with no owner
    file younger than ``OWNERLESS_GRACE_S``).  Args: ``prefix``: only names
    starting with it (e.g. ``"." + slide``).  Returns the paths removed.
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
        lock_path = os.path.join(full, OWNER_FILE) if is_dir else full
        fd = None
        try:
            fd = _lock_fd(lock_path)
        except BlockingIOError:
            continue  # a live writer holds it
        except FileNotFoundError:
            if not os.path.lexists(full) or not is_dir or not _ownerless_and_old(full):
                continue  # gone meanwhile, or an older version's folder that may be in use
        except OSError:
            # No lock can be tested here (EBADF, ENOLCK, EOPNOTSUPP, ...): remove
            # only what a process of this host that is gone left.
            if not (is_dir and _owner_gone(lock_path)):
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


def _ownerless_and_old(folder: str) -> bool:
    """May a scratch folder without an owner file (an older version's) go?"""
    # ``temp_dir`` gives a folder its temporary name only once its owner file
    # is locked, so one without is an older version's; those locked the folder itself.
    try:
        os.close(_lock_dir_fd(folder))
        return True
    except BlockingIOError:
        return False
    except OSError:
        pass  # (NFS: EBADF) left alone for a while, then removed
    try:
        return time.time() - os.stat(folder).st_mtime > OWNERLESS_GRACE_S
    except OSError:
        return False


def _lock_dir_fd(path: str) -> int:
    return _flocked_fd(path, os.O_RDONLY | os.O_DIRECTORY)


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
