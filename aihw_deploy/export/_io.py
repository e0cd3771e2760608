"""Atomic file output: write to a temporary file beside the target, then rename over it, so a
failed export never leaves a partial (or truncated) file behind."""

import os
import tempfile
from pathlib import Path
from typing import Callable, Union

from ._attributes import ExportError

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write(path: PathLike, write: Callable[[str], None]) -> Path:
    """Calls ``write(tmp_path)`` and renames ``tmp_path`` to ``path``; removes it on failure."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a file path, got {type(path).__name__}")
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ExportError(f"output folder {str(folder)!r} does not exist")
    if path.is_dir():
        raise ExportError(f"output path {str(path)!r} is a folder")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{path.suffix}", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_bytes(data: bytes) -> Callable[[str], None]:
    def _write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return _write
