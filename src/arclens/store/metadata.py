"""The store's metadata.json (SPEC.md section 3): building its sections, checking it, comparing two.

One module for every job that writes a store (``arclens extract``, ``arclens infer --hooks``):

- building: ``model_section`` and ``tasks_section`` (with ``tasks_fingerprint``), the parts a job
  describes; the store fills ``format``, ``version``, ``created_at`` and ``arclens_version``;
- checking: ``check_metadata``, the fields every reader relies on;
- comparing: ``metadata_differences`` and ``describe_differences``, what a resume into an
  existing store is refused on; the model and the tasks are compared by content fingerprints
  (``FINGERPRINTED_SECTIONS``), not by how ``--model`` and ``--tasks`` were spelled.
"""

from __future__ import annotations

import hashlib
import json

from arclens.store.format import ACTIVATION_DTYPES, COLUMNS, FORMAT, VERSION

# Fields that legitimately differ between the run that created a store and one resuming it.
VOLATILE_METADATA_FIELDS = ("created_at", "arclens_version")

# Sections that a content fingerprint identifies better than the spelling they were given under
# (section -> its spelling field). When both sides carry comparable ``fingerprint``s (same scheme),
# the spelling is not compared: ``--model .demo/m`` resumes a store made with ``--model
# /abs/.demo/m``, a hub id resumes one made with its snapshot directory, ``--tasks ./x.json`` one
# made with ``--tasks /abs/x.json``. When either side lacks one (a store made before fingerprints),
# the spelling is compared as before and the fingerprint is not. docs/STORE.md, "Resume".
FINGERPRINTED_SECTIONS = {"model": "name", "tasks": "source"}
FINGERPRINT_FIELD = "fingerprint"


TASKS_FINGERPRINT_SCHEME = "tasks-sha256-v1"


def tasks_fingerprint(tasks, with_answer: bool) -> str:
    """``"tasks-sha256-v1:<hex>"`` of what the prompts are rendered from: every task's id, train
    pairs and test inputs, in id order, plus the test outputs when the prompts show them
    (``--with-answer``). A sample key names only (task id, test index, augmentation index), so this
    is what tells a resume that ``--tasks ./x.json`` and ``--tasks /abs/x.json`` (or a copy) hold the
    same tasks, and that an edited file under the same name does not. Test outputs a prompt never
    shows (``--solutions`` without ``--with-answer``) change nothing extracted, so they are left out."""
    digest = hashlib.sha256(TASKS_FINGERPRINT_SCHEME.encode() + b"\0")
    for t in sorted(tasks, key=lambda t: t.task_id):
        test = [e.to_json() if with_answer else {"input": e.to_json()["input"]} for e in t.test]
        item = {"id": t.task_id, "train": [e.to_json() for e in t.train], "test": test}
        digest.update(json.dumps(item, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    return f"{TASKS_FINGERPRINT_SCHEME}:{digest.hexdigest()}"


def model_section(name: str, config: dict, dtype: str, *, fingerprint: str | None,
                  random_weights: bool, toy_weights: bool = False) -> dict:
    """``metadata["model"]``: ``name`` as given, the Qwen2 ``config`` fields, the compute ``dtype``,
    whether the weights are random (`arclens random-model`) or a toy model's (`arclens toy-model`;
    the field only then, so stores of other models keep their metadata), and the content
    ``fingerprint`` (model/fingerprint.py), an extension of SPEC's fields that resumes compare by."""
    model = {"name": name, "config": config, "dtype": dtype, "random_weights": bool(random_weights)}
    if toy_weights:
        model["toy_weights"] = True
    if fingerprint is not None:
        model[FINGERPRINT_FIELD] = fingerprint
    return model


def tasks_section(source: str, tasks, with_answer: bool) -> dict:
    """``metadata["tasks"]``: how they were named, how many, and their content fingerprint."""
    return {"source": source, "count": len(tasks), FINGERPRINT_FIELD: tasks_fingerprint(tasks, with_answer)}


def metadata_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields where two metadata dicts differ (volatile fields skipped; a
    fingerprinted section compared by its fingerprint, not its spelling, see
    ``FINGERPRINTED_SECTIONS``)."""
    if not prefix:
        old, new = _identity_views(old, new)
    diffs = []
    for k in sorted(set(old) | set(new)):
        if not prefix and k in VOLATILE_METADATA_FIELDS:
            continue
        name = f"{prefix}{k}"
        if k not in old or k not in new:
            diffs.append(name)
        elif isinstance(old[k], dict) and isinstance(new[k], dict):
            diffs += metadata_differences(old[k], new[k], prefix=f"{name}.")
        elif _normalise(old[k]) != _normalise(new[k]):
            diffs.append(name)
    return diffs


def fingerprint_scheme(fingerprint) -> str | None:
    """``"scheme"`` of a ``"scheme:hex"`` fingerprint; None for anything else (absent, malformed)."""
    if isinstance(fingerprint, str) and ":" in fingerprint:
        scheme, _, value = fingerprint.partition(":")
        if scheme and value:
            return scheme
    return None


def fingerprints_comparable(a, b) -> bool:
    """Both are fingerprints of the same scheme (another scheme may hash other things)."""
    scheme = fingerprint_scheme(a)
    return scheme is not None and scheme == fingerprint_scheme(b)


def _identity_views(old: dict, new: dict) -> tuple[dict, dict]:
    """Copies of two metadata dicts with, per fingerprinted section, either the spelling field
    (both sides fingerprinted alike) or the fingerprint field (otherwise) left out."""
    old, new = dict(old), dict(new)
    for section, spelling in FINGERPRINTED_SECTIONS.items():
        a, b = old.get(section), new.get(section)
        if not (isinstance(a, dict) and isinstance(b, dict)):
            continue
        a, b = dict(a), dict(b)
        drop = spelling if fingerprints_comparable(a.get(FINGERPRINT_FIELD), b.get(FINGERPRINT_FIELD)) else FINGERPRINT_FIELD
        a.pop(drop, None)
        b.pop(drop, None)
        old[section], new[section] = a, b
    return old, new


def _normalise(x):
    # JSON round trip: tuples vs lists and int vs float 1.0 must not count as differences.
    return json.loads(json.dumps(x, sort_keys=True))


def describe_difference(old: dict, new: dict, field: str) -> str:
    def get(d):
        for part in field.split("."):
            if not isinstance(d, dict) or part not in d:
                return "<absent>"
            d = d[part]
        return json.dumps(_short(d) if part == FINGERPRINT_FIELD else d)[:80]

    return f"{field}: store has {get(old)}, this run has {get(new)}"


def _short(fingerprint):
    # scheme and 12 hex digits: enough to tell two apart in a one-line message
    scheme = fingerprint_scheme(fingerprint)
    return f"{scheme}:{fingerprint.partition(':')[2][:12]}" if scheme else fingerprint


def describe_differences(old: dict, new: dict, diffs: list[str], dest: str) -> str:
    """The one-line refusal for a resume into ``dest`` whose settings differ in ``diffs``
    (``metadata_differences(old, new)``, non-empty). Another model (weights or tokenizer) gets a message of its own:
    that is the mistake that would silently mix two models' activations into one store."""
    others = [d for d in diffs if not d.startswith("model.")]
    also = f" Other settings differ too: {', '.join(others)}." if others else ""
    if f"model.{FINGERPRINT_FIELD}" in diffs:
        m_old, m_new = old.get("model") or {}, new.get("model") or {}
        was, now = m_old.get("name"), m_new.get("name")
        fp_old, fp_new = _short(m_old.get(FINGERPRINT_FIELD)), _short(m_new.get(FINGERPRINT_FIELD))
        if was == now:
            what = (f"the model at {now} (its weights or tokenizer) changed since this store was created "
                    f"(model fingerprint {fp_old} then, {fp_new} now)")
        else:
            what = (f"this store was created with the model {was} (model fingerprint {fp_old}), and "
                    f"{now} holds other weights or another tokenizer ({fp_new})")
        return (f"{dest}: {what}; resuming would mix activations of two models. Use another --out, or "
                f"the original model to resume.{also}")
    details = "; ".join(describe_difference(old, new, d) for d in diffs[:6])
    return (f"{dest} already holds a store with other settings ({', '.join(diffs)}): {details}. "
            "Use another --out, or the original settings to resume.")


def check_metadata(meta: dict, where: str) -> None:
    """The fields every reader relies on; raises ValueError naming the first bad one."""
    if meta.get("format") != FORMAT:
        raise ValueError(f"{where}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise ValueError(f"{where}: version {meta.get('version')!r} is not supported (expected {VERSION})")
    hooks = meta.get("hooks")
    if not isinstance(hooks, list) or not hooks or not all(isinstance(h, str) for h in hooks):
        raise ValueError(f"{where}: hooks must be a non-empty list of hook names")
    if len(set(hooks)) != len(hooks) or set(hooks) & set(COLUMNS):
        raise ValueError(f"{where}: hooks must be distinct and not named like a column")
    if meta.get("dtype") not in ACTIVATION_DTYPES:
        raise ValueError(f"{where}: dtype must be one of {', '.join(ACTIVATION_DTYPES)}")
    if not isinstance(meta.get("d_model"), int) or meta["d_model"] <= 0:
        raise ValueError(f"{where}: d_model must be a positive integer")
