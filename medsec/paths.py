"""Where medsec keeps generated data and trained models, and how it writes files safely."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medsec.errors import MedsecError


def cache_root(override: str | Path | None = None) -> Path:
    """The cache folder: the argument, else $MEDSEC_CACHE, else ~/.cache/medsec."""
    if override is not None:
        root = Path(override)
    else:
        root = Path(os.environ.get("MEDSEC_CACHE", Path.home() / ".cache" / "medsec"))
    return root.expanduser()


def ensure_writable_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create `path` if needed and check that files can be written there; a clear error otherwise."""
    p = Path(path).expanduser()
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MedsecError(f"cannot create {what} {p}: {e.strerror or e}") from e
    if not os.access(p, os.W_OK | os.X_OK):
        raise MedsecError(f"{what} {p} is not writable")
    return p


@contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it is renamed onto `dest`, so no reader
    ever sees a half-written file. On failure the temporary file is removed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(dest: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(dest: str | Path, data: bytes, *, durable: bool = False) -> None:
    """Write a binary file atomically (the parent folder is created). `durable` also fsyncs the file before
    the rename and the folder after it: once this returns the file survives a crash or power loss whole
    (what the DICOM node needs before it acknowledges an instance); either way `dest` is never half-written."""
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        if not durable:
            tmp.write_bytes(data)
        else:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    if durable:
        fsync_dir(dest.parent)
