"""Step 1 of the commit protocol (store/writer.py, docs/STORE.md): a store's ``metadata.json``,
created create-only, or an existing one compared with the settings of this run.

``open_or_create_store`` is re-exported by store/writer.py, where its callers import it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from arclens._version import __version__
from arclens.errors import UserError
from arclens.store import fs as fsx
from arclens.store.format import FORMAT, METADATA_FILE, VERSION, encode_json
from arclens.store.index import read_metadata
from arclens.store.metadata import check_metadata, describe_differences, metadata_differences


@dataclass(frozen=True)
class StoreHandle:
    dest: str
    fs: object
    root: str
    metadata: dict


def open_or_create_store(dest: str, metadata: dict, storage_options: dict | None = None) -> StoreHandle:
    """Create the store with ``metadata`` (``format``, ``version``, ``created_at`` and
    ``arclens_version`` are filled in when absent), or open an existing one whose settings equal
    ``metadata`` (``model`` and ``tasks`` compared by their fingerprints where both stores have
    one: ``store.metadata.metadata_differences``); otherwise UserError naming every differing field."""
    meta = {"format": FORMAT, "version": VERSION, **metadata}
    meta.setdefault("created_at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    meta.setdefault("arclens_version", __version__)
    try:
        check_metadata(meta, "store metadata")
    except ValueError as err:
        raise UserError(str(err)) from None
    fs, root = fsx.get_fs(dest, storage_options)
    path = fsx.join(root, METADATA_FILE)
    try:
        fsx.create_only(fs, path, encode_json(meta))
        return StoreHandle(dest, fs, root, meta)
    except FileExistsError:
        pass  # an existing store (or a concurrent creator): compare below
    except PermissionError as err:
        raise UserError(f"{dest}: cannot write here ({err})") from None
    except OSError as err:
        if fsx.is_transient(err):
            raise
        raise UserError(f"{dest}: cannot create the store ({type(err).__name__}: {err})") from None
    existing = read_metadata(fs, root, dest)
    diffs = metadata_differences(existing, meta)
    if diffs:
        raise UserError(describe_differences(existing, meta, diffs, dest))
    # The existing metadata stays as it was (create-only): a model or task set given under another
    # spelling but with the same fingerprint resumes under the store's original name.
    return StoreHandle(dest, fs, root, existing)
