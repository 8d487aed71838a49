"""`arclens infer`'s files in ``--out DIR`` and its resume (docs/INFERENCE.md).

- ``infer.json``: the settings of the run. A re-run into the same DIR with other settings is
  refused (the model compared by fingerprint where both runs have one; the edits of
  ``--splice/--ablate/--steer`` by kind, hook, SAE fingerprint, latents, alpha, error term and
  filter); with the same ones it resumes.
- ``predictions.jsonl``: one line per sample (SPEC.md section 2), appended a window of whole
  tasks at a time and fsynced, so the file only ever grows by complete tasks. On resume a task
  whose every sample key is in the file is skipped; lines of an incomplete task (a torn write)
  are dropped by rewriting the file, and a torn last line is ignored.
- ``submission.json``: written atomically at the end (submission.py builds it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from arclens.data.atomic import replace_atomically
from arclens.data.tasks import grid_to_json
from arclens.errors import UserError

PREDICTIONS = "predictions.jsonl"
SUBMISSION = "submission.json"
SETTINGS = "infer.json"
FINGERPRINT_KEY = "model_fingerprint"
EDITS_KEY = "edits"  # infer.json and each prediction line of a run with --splice/--ablate/--steer


def atomic_write_json(path: Path, obj) -> None:
    replace_atomically(path, json.dumps(obj, separators=(",", ":")))


def read_predictions(path: Path) -> list[dict]:
    """Every complete line; a torn last line (a crash mid-write) is ignored."""
    if not path.exists():
        return []
    records = []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # only the last line may be torn
                break
            raise UserError(f"{path}: line {i + 1} is not JSON; this is not a predictions file of arclens infer")
    return records


def completed_tasks(records: Sequence[dict], expected: dict[str, set[str]]) -> set[str]:
    """Tasks every one of whose expected sample keys has a record."""
    have: dict[str, set[str]] = {}
    for r in records:
        have.setdefault(r["task_id"], set()).add(r["key"])
    return {t for t, keys in expected.items() if keys and keys <= have.get(t, set())}


def append_lines(path: Path, records: Sequence[dict]) -> None:
    data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
    with open(path, "a") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def rewrite_lines(path: Path, records: Sequence[dict]) -> None:
    replace_atomically(path, "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))


def check_settings(out: Path, settings: dict) -> None:
    """Create ``infer.json``, or refuse a resume whose settings differ."""
    path = out / SETTINGS
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{path}: unreadable ({e}); remove it or use another --out") from None
        from arclens.pipeline.infer_edits import differences

        # A run without edits has no "edits" key (its infer.json is as it was before edits existed).
        edit_diffs = differences(old.get(EDITS_KEY) or [], settings.get(EDITS_KEY) or [])
        diffs = sorted(k for k in (set(old) | set(settings)) - {EDITS_KEY} if old.get(k) != settings.get(k))
        from arclens.store.metadata import fingerprints_comparable

        if fingerprints_comparable(old.get(FINGERPRINT_KEY), settings.get(FINGERPRINT_KEY)):
            # Both runs fingerprinted their model: that, not the spelling of --model, says whether
            # it is the same one (model/fingerprint.py).
            diffs = [k for k in diffs if k != "model"]
        else:  # a run directory from before fingerprints: compare by name, as it did
            diffs = [k for k in diffs if k != FINGERPRINT_KEY]
        if diffs or edit_diffs:
            details = "; ".join(edit_diffs[:4] + [f"{k}: {old.get(k)!r} there, {settings.get(k)!r} now"
                                                  for k in diffs[:4]])
            raise UserError(f"--out {out} holds a run with other settings ({details}); use another --out")
        return
    atomic_write_json(path, settings)


def prediction_record(sample, gen, tokenizer, encoder, edits: list[dict] | None = None) -> dict:
    """One line of predictions.jsonl (SPEC.md section 2) for a sample and its Generation; with
    ``edits`` (the run's edit records, infer_edits.py) the line says which edits produced it."""
    from arclens.prompts import parse_grid, validate_grid

    text = tokenizer.decode(gen.token_ids.tolist(), skip_special_tokens=True)
    grid = parse_grid(text, encoder)
    reverted = None
    if grid is not None:
        try:
            reverted = validate_grid(sample.augmentation.revert(grid))
        except ValueError:
            reverted = None
    return {
        "key": sample.key,
        "task_id": sample.task_id,
        "test_index": sample.test_index,
        "augmentation": sample.augmentation.to_json(),
        "prompt_token_ids": sample.token_ids.tolist(),
        "output_token_ids": gen.token_ids.tolist(),
        "output_text": text,
        "logprobs": [float(x) for x in gen.logprobs],
        "stop_reason": gen.stop_reason,
        "grid": grid_to_json(grid),
        "reverted_grid": grid_to_json(reverted),
        **({EDITS_KEY: edits} if edits else {}),
    }
