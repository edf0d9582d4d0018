"""Atomic local writes that keep the file suffix.

Writers get a temporary path in the destination's own folder with the destination's suffix
(``photo-luigi-tmp-123456.jpg``), so libraries that infer a format from the suffix (Pillow,
onnx, ...) work; the file is renamed into place only when the block succeeds and removed on
any exception, so readers never see a partial file. Luigi's own ``temporary_path`` loses the
suffix and leaks the file on failure (luigi issue #3128, PR #3365).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path


def temporary_sibling(path: str | os.PathLike[str]) -> Path:
    """A fresh temporary name beside ``path`` with the same suffix(es)."""
    path = Path(path)
    suffix = "".join(path.suffixes) if path.suffixes else ""
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return path.with_name(f"{stem}-luigi-tmp-{random.randrange(10**9, 10**10)}{suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` on success, delete on error."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(final)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to the temporary file {tmp} for {final}")
        os.replace(tmp, final)  # atomic on POSIX within one filesystem
    except BaseException:
        # The writer may have made a folder (a directory output): unlink() would raise
        # IsADirectoryError here, hiding the real error and leaving the folder behind.
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary sibling, fsync, rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)
