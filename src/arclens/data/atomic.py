"""Local files written so that a reader never sees half of one: the one helper for every package.

A file is written to a hidden temporary name in its own folder, fsynced, then published by
``os.replace`` (or ``os.link``, for create-only), and the folder is fsynced so the new name
survives a crash. On any error the temporary file is removed. ``atomic_text_files`` publishes a
group of files only after every one of them has been written, so an error (bad input found late,
a full disk, Ctrl-C) leaves the previous outputs or nothing, never a truncated file. The store
(store/fs.py, store/writer.py) and infer's outputs use the same functions.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TextIO

from arclens.errors import UserError


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename or link in ``folder`` durable (a crash after it keeps the new name)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_path_beside(path: str | os.PathLike) -> str:
    """A fresh name in ``path``'s folder, hidden (leading dot), for a file published later."""
    folder, name = os.path.split(os.fspath(path))
    return os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex}")


@contextmanager
def temp_file_beside(path: str | os.PathLike, mode: str = "wb", folder: str | None = None) -> Iterator[tuple[IO, str]]:
    """``(open file, its path)``: a new temporary file (``O_EXCL``) in ``path``'s folder (or in
    ``folder``), flushed and fsynced when the block ends. Removed when the block raises; otherwise
    the caller publishes it (``os.replace``, ``os.link``) and removes what is left."""
    tmp = temp_path_beside(path) if folder is None else temp_path_beside(os.path.join(folder, os.path.basename(path)))
    os.makedirs(os.path.dirname(tmp) or ".", exist_ok=True)
    try:
        with open(tmp, "x" + mode.replace("w", "")) as f:
            yield f, tmp
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_atomically(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never part of
    one: a temporary file beside it, fsynced, ``os.replace``d, and the folder fsynced. On error
    nothing is left behind."""
    with temp_file_beside(path, "wb") as (f, tmp):
        f.write(data.encode() if isinstance(data, str) else data)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(os.path.dirname(os.fspath(path)) or ".")


@contextmanager
def atomic_text_files(*paths: Path) -> Iterator[tuple[TextIO, ...]]:
    """Yield one open text file per path; all are moved into place together on success and
    all are deleted on any exception."""
    temps = [Path(temp_path_beside(p)) for p in paths]
    files: list[TextIO] = []
    try:
        for tmp in temps:
            files.append(open(tmp, "x", encoding="utf-8"))  # noqa: SIM115 - closed on commit or discard
    except OSError as e:
        _discard(files, temps)
        raise UserError(f"{e.filename}: cannot write ({e.strerror})") from None
    try:
        yield tuple(files)
    except BaseException:
        _discard(files, temps)
        raise
    try:
        for f in files:
            f.flush()
            os.fsync(f.fileno())
            f.close()
        for tmp, final in zip(temps, paths):
            os.replace(tmp, final)
        for folder in {os.path.dirname(os.fspath(p)) or "." for p in paths}:
            fsync_dir(folder)
    except OSError as e:
        _discard(files, temps)
        raise UserError(f"{e.filename or paths[0]}: cannot write ({e.strerror})") from None


def _discard(files: list[TextIO], temps: list[Path]) -> None:
    for f in files:
        f.close()
    for tmp in temps:
        tmp.unlink(missing_ok=True)


def ensure_output_dir(path: str | os.PathLike, flag: str = "--output-dir") -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"{flag} {out}: exists and is not a folder") from None
    except OSError as e:
        raise UserError(f"{flag} {out}: cannot create folder ({e.strerror})") from None
    return out


class JsonObjectWriter:
    """Stream a JSON object ``{key: value, ...}`` to a file one entry (one line) at a time, so
    that 200k converted tasks never have to sit in memory together."""

    def __init__(self, f: TextIO):
        self._f = f
        self._first = True
        f.write("{")

    def add(self, key: str, value) -> None:
        self._f.write("\n" if self._first else ",\n")
        self._f.write(json.dumps(key) + ": " + json.dumps(value, separators=(",", ":")))
        self._first = False

    def close(self) -> None:
        self._f.write("\n}\n")
