"""Atomic output directories: readers see the old directory or the complete new one, never a part.

New files are written into a staging directory beside the target (same file system). On
success the staging directory becomes the target in one rename: when the target does not exist
yet, a plain rename; when it exists (``-o`` equal to ``-m`` is the documented in-place use), its
entries that are not being replaced are hard-linked into the staging directory first and the two
directories are swapped with ``renameat2(RENAME_EXCHANGE)``. Where the kernel or file system
lacks that call, the swap is two renames with a window of microseconds in which the target
name is absent (never half-written). A failure or kill before the swap leaves the target as it
was; a kill leaves at most a hidden ``.<name>.tmp-*`` directory beside it.

This protects against failures and kills, not against power loss: files are not fsynced.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.errors import MeasurementError

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _renameat2() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - no C library to ask
        return None
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
    return fn


_EXCHANGE = _renameat2()


def exchange(a: Path, b: Path) -> bool:
    """Swap two directories atomically; False when the system cannot."""
    if _EXCHANGE is None:
        return False
    rc = _EXCHANGE(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _carry_over(old: Path, stage: Path) -> None:
    """Put every entry of ``old`` that the new set does not replace into ``stage``."""
    with os.scandir(old) as it:
        for entry in it:
            dst = stage / entry.name
            if os.path.lexists(dst):
                continue
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), dst)
            elif entry.is_dir():
                shutil.copytree(entry.path, dst, symlinks=True, copy_function=_link_or_copy)
            else:
                _link_or_copy(entry.path, str(dst))


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def _commit(stage: Path, target: Path) -> None:
    if not target.exists():
        os.chmod(stage, _default_mode())
        try:
            os.rename(stage, target)
            return
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not target.is_dir():
                raise
            # created meanwhile: fall through to the swap
    _carry_over(target, stage)
    os.chmod(stage, os.stat(target).st_mode & 0o7777)
    if exchange(stage, target):
        shutil.rmtree(stage, ignore_errors=True)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rmdir(old)
    os.rename(target, old)
    try:
        os.rename(stage, target)
    except OSError:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_directory(target: Path | str) -> Iterator[Path]:
    """Yield a staging directory; on normal exit it atomically becomes (or joins) ``target``."""
    target = Path(os.path.abspath(target))
    if target.exists():
        if not target.is_dir():
            raise MeasurementError(target, "the output path exists and is not a directory")
        target = Path(os.path.realpath(target))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as exc:
        raise MeasurementError(
            target, f"cannot write the output directory: {exc.strerror}"
        ) from None
    try:
        yield stage
        _commit(stage, target)
    except OSError as exc:
        shutil.rmtree(stage, ignore_errors=True)
        raise MeasurementError(target, f"cannot write the output: {exc}") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
