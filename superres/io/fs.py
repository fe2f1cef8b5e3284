"""Files that appear whole or not at all, and the temp files a killed writer leaves behind.

Every file superres writes goes through `atomic_write` (bytes in hand) or `atomic_write_with` (a
library that wants a path to write to: torch.save, safetensors, ONNX): the content goes to a hidden
temp file beside the destination, which is renamed onto it only once complete. A reader, or a run
that skips finished outputs, never sees half a file.

The temp files are all named ".NAME.superres-<pid>-<8 random characters>.tmp" next to NAME (e.g.
".photo.png.superres-4711-k2x9_q0a.tmp"): the writer's process id
in the name tells a file left by a killed run (its process is gone; SIGKILL runs no cleanup) from one
being written now, so `remove_stale_temp_files` can clean up after the former without touching the
latter or anything that is not ours.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

log = logging.getLogger(__name__)

__all__ = ["atomic_write", "atomic_write_with", "make_temp_file", "remove_stale_temp_files", "temp_file_target"]

T = TypeVar("T")

# .NAME.superres-<pid>-<random>.tmp, where mkstemp's random part is 8 characters of [a-z0-9_]
# (plus NAME's extension again after .tmp when the writer needs it to pick a format, as PyAV does)
_TEMP_RE = re.compile(r"\.(?P<name>.+)\.superres-(?P<pid>\d+)-[a-z0-9_]{8}\.tmp(?:\.[A-Za-z0-9]{1,12})?")
# What earlier versions wrote (weights.atomic_write_bytes): .NAME.<8 random characters>.tmp, no pid, so
# such a file can only be recognised by the output name the caller is about to write.
_LEGACY_TEMP = r"\.{name}\.[a-z0-9_]{{8}}\.tmp"


def _as_destination_error(e: OSError, path: Path) -> OSError:
    """The same error naming `path`: a message about a hidden temp file would only confuse."""
    return OSError(e.errno, e.strerror, str(path))


def make_temp_file(path: str | os.PathLike, *, parents: bool = True, keep_suffix: bool = False) -> Path:
    """Create (empty) and return the temp file that will become `path`, in `path`'s folder so that
    the final rename never crosses a file system. `parents` creates missing folders first;
    `keep_suffix` ends the name with `path`'s extension too, for writers that choose the format by it."""
    path = Path(path)
    try:
        if parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.superres-{os.getpid()}-",
                                   suffix=".tmp" + (path.suffix if keep_suffix else ""), dir=path.parent)
    except OSError as e:
        raise _as_destination_error(e, path) from e
    os.close(fd)
    return Path(tmp)


def _publish(tmp: Path, path: Path) -> None:
    # mkstemp makes the file 0600; give the result the permissions a plain open() would have
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def atomic_write_with(path: str | os.PathLike, write: Callable[[Path], T], *, parents: bool = True,
                      keep_suffix: bool = False) -> T:
    """Call `write(tmp)` to fill a temp file, then rename it onto `path`; returns what `write` returned.

    On any exception (KeyboardInterrupt and SystemExit from a signal handler included) the temp file
    is removed and `path` is left as it was. An OSError names `path`, never the temp file.
    """
    path = Path(path)
    tmp = make_temp_file(path, parents=parents, keep_suffix=keep_suffix)
    try:
        result = write(tmp)
        _publish(tmp, path)
        return result
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename != str(path):
            raise _as_destination_error(e, path) from e
        raise


def atomic_write(path: str | os.PathLike, data: bytes, *, parents: bool = True) -> None:
    """Write `data` to `path` atomically (see `atomic_write_with`)."""
    atomic_write_with(path, lambda tmp: tmp.write_bytes(data), parents=parents)


def temp_file_target(temp: str | os.PathLike) -> Path | None:
    """The destination a temp file of ours was to become (same folder), or None if not ours."""
    temp = Path(temp)
    m = _TEMP_RE.fullmatch(temp.name)
    return temp.with_name(m["name"]) if m else None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True   # PermissionError: it exists, owned by someone else
    return True


def remove_stale_temp_files(folder: str | os.PathLike, names: set[str] | frozenset[str] = frozenset()
                            ) -> list[Path]:
    """Delete the temp files that killed writers left in `folder`; return what was deleted.

    Only files matching our own pattern go: ours whose writing process no longer exists, and for each
    output file name in `names` (which the caller is about to write) the older pattern without a
    process id. Nothing else in the folder is touched.
    """
    folder = Path(folder)
    legacy = [re.compile(_LEGACY_TEMP.format(name=re.escape(n))) for n in names]
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(".") or ".tmp" not in entry.name:
            continue
        m = _TEMP_RE.fullmatch(entry.name)
        stale = (m is not None and int(m["pid"]) != os.getpid() and not _process_alive(int(m["pid"]))) \
            or any(r.fullmatch(entry.name) for r in legacy)
        if not stale or not entry.is_file(follow_symlinks=False):
            continue
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except FileNotFoundError:
            pass   # another run cleaned it first
        except OSError as e:
            log.warning("could not remove the stale temp file %s (%s)", entry.path, e.strerror or e)
    return removed
