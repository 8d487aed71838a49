"""Write output files so that a reader never sees half of one.

Each file is written to a temporary name in the same folder and `os.replace`d into place only
after every file of the group has been written, so an error (bad input found late, a full disk,
Ctrl-C) leaves the previous outputs or nothing, never a truncated file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from arclens.errors import UserError


@contextmanager
def atomic_text_files(*paths: Path) -> Iterator[tuple[TextIO, ...]]:
    """Yield one open text file per path; all are moved into place together on success and
    all are deleted on any exception."""
    temps = [p.with_name(f".{p.name}.tmp-{os.getpid()}") for p in paths]
    files: list[TextIO] = []
    try:
        for tmp in temps:
            files.append(open(tmp, "w", encoding="utf-8"))  # noqa: SIM115 - closed on commit or discard
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
