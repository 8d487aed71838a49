"""`arclens infer --splice / --ablate / --steer`: SAE edits in the loop of a generation run.

SPEC.md section 6. The flags become ``EditSpec``s (parsed, one line per mistake), each SAE is
loaded once and checked against the model (hook, width, the model it was made for; latents in
range), and the run gets ``RunEdit``s: the hook, the ``Edit`` (its params, the SAE's arrays, are a
pytree that the run places beside each device replica's weights) and the ``record`` that
``infer.json``, every prediction line and the ``--hooks`` store keep, so that a resume with another
edit is refused and the outputs say which edit made them (docs/INFERENCE.md, docs/INTERVENTIONS.md).

How the flags combine: each may be given several times; every edit sits at its SAE's output hook
and there is at most one edit per hook. Edits at different hooks compose in the model's order
(model/edits.py), each later one seeing the earlier ones' effect. ``--keep-error/--no-keep-error``
sets the error term of every splice and ablation (defaults: splice without, ablate with);
``--edit-where`` is the token filter of every edit (default: every token).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from arclens.errors import UserError

SPLICE, ABLATE, STEER = "splice", "ablate", "steer"
FORMS = {SPLICE: "SAE_DIR", ABLATE: "SAE_DIR:L1,L2,...", STEER: "SAE_DIR:LATENT:ALPHA"}
WHERE_WORDS = "everywhere, answer, prompt, cells, cells:train_input, cells:train_output, cells:test_input, cells:N"


@dataclass(frozen=True)
class EditSpec:
    """One ``--splice/--ablate/--steer`` flag as the user gave it, parsed (nothing loaded yet)."""

    kind: str  # splice | ablate | steer
    sae: str  # the SAE folder (local path or fsspec URL), as given
    latents: tuple[int, ...] = ()  # ablate: sorted, unique; steer: the one latent
    alpha: float | None = None  # steer

    @property
    def flag(self) -> str:
        return f"--{self.kind} {self.sae}"


@dataclass(frozen=True)
class RunEdit:
    """An edit of the run: ``edit`` goes to ``generate(edits={hook: edit})``; ``record`` is what
    the run's files say about it (JSON: infer.json's ``edits``, each prediction line's)."""

    hook: str
    edit: object  # arclens.model.edits.Edit
    record: dict


# ---------------------------------------------------------------------------------------------
# Flags -> specs


def _latent(text: str, raw: str, kind: str) -> int:
    if not re.fullmatch(r"-?\d+", text.strip()):
        raise UserError(f"--{kind} {raw}: latent {text!r} is not an integer index (expected {FORMS[kind]})")
    return int(text)


def parse_specs(splice: Sequence[str] = (), ablate: Sequence[str] = (), steer: Sequence[str] = ()) -> list[EditSpec]:
    """The flags as specs; UserError (one line, naming the flag) for a malformed one. The SAE path
    is everything before the last ':' (ablate) or the last two (steer), so URLs keep theirs."""
    specs = []
    for raw in splice or ():
        if not raw.strip():
            raise UserError(f"--splice: expected {FORMS[SPLICE]}, got an empty string")
        specs.append(EditSpec(SPLICE, raw))
    for raw in ablate or ():
        path, sep, latents = raw.rpartition(":")
        if not sep or not path or not latents.strip():
            raise UserError(f"--ablate {raw}: expected {FORMS[ABLATE]} (latent indices after the last ':')")
        idx = sorted({_latent(t, raw, ABLATE) for t in latents.split(",")})
        specs.append(EditSpec(ABLATE, path, tuple(idx)))
    for raw in steer or ():
        parts = raw.rsplit(":", 2)
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise UserError(f"--steer {raw}: expected {FORMS[STEER]}")
        path, latent, alpha_text = parts
        try:
            alpha = float(alpha_text)
        except ValueError:
            alpha = math.nan
        if not math.isfinite(alpha):
            raise UserError(f"--steer {raw}: alpha {alpha_text!r} is not a finite number (expected {FORMS[STEER]})")
        specs.append(EditSpec(STEER, path, (_latent(latent, raw, STEER),), alpha))
    return specs


def parse_where(text: str | None):
    """``--edit-where``: ``(token filter (model/edits.py), its canonical text)`` from words joined
    by '|' (a union)."""
    from arclens.model import edits as E

    if text is None or text.strip() == "everywhere":
        return E.everywhere(), "everywhere"
    out, words = None, []
    for word in text.split("|"):
        word = word.strip()
        kind, _, grid = word.partition(":")
        if word == "answer":
            w = E.answer()
        elif word == "prompt":
            w = ~E.answer()
        elif kind == "cells" and not grid:
            w = E.cells()
        elif kind == "cells" and grid in ("train_input", "train_output", "test_input"):
            w = E.cells(grid)
        elif kind == "cells" and grid.isdigit():
            w = E.cells(int(grid))
        elif kind == "cells" and grid == "answer":
            raise UserError("--edit-where cells:answer: an inference prompt shows no answer grid, and generated "
                            "tokens are no known cells (docs/INTERVENTIONS.md); use 'answer' for the generated tokens")
        else:
            raise UserError(f"--edit-where {text}: {word!r} is not one of {WHERE_WORDS} (join several with '|')")
        out = w if out is None else out | w
        words.append(word)
    return out, "|".join(words)


# ---------------------------------------------------------------------------------------------
# Specs -> loaded, checked edits


def _reflag(err: UserError, spec: EditSpec) -> UserError:
    """The SAE package's messages name ``--sae DIR``; the user typed ``--splice DIR`` (or ...)."""
    msg = str(err)
    if msg.startswith(f"{spec.flag}: "):
        return err
    for prefix in (f"--sae {spec.sae}: ", f"--sae {spec.sae.rstrip('/')}: "):
        if msg.startswith(prefix):
            return UserError(f"{spec.flag}: {msg[len(prefix):]}")
    return UserError(f"{spec.flag}: {msg}")


def sae_fingerprint(sae) -> str:
    """``sha256:<hex>`` of an SAE's configuration (every field but the free-form metadata) and its
    weights as loaded (name, dtype, shape, bytes): the same SAE under another path has the same
    fingerprint, other weights another."""
    from arclens.sae.saelens_format import weights_dict

    digest = hashlib.sha256()
    cfg = {k: v for k, v in asdict(sae.cfg).items() if k != "metadata_json"}
    digest.update(json.dumps(cfg, sort_keys=True).encode())
    for name, array in sorted(weights_dict(sae).items()):
        a = np.ascontiguousarray(array)
        digest.update(f"{name}:{a.dtype.str}:{list(a.shape)}".encode())
        digest.update(a.tobytes())
    return f"sha256:{digest.hexdigest()}"


def _path(sae: str) -> str:
    import os

    return sae if "://" in sae else os.path.abspath(sae)


def build_edits(specs: Sequence[EditSpec], config, *, model: str, model_path, model_fingerprint: str | None,
                keep_error: bool | None = None, where: str | None = None,
                allow_other_model: bool = False) -> tuple[RunEdit, ...]:
    """Load and check every SAE (UserError, one line naming the flag: no SAE folder, a hook or
    width that is not the model's, an SAE made for another model, a latent out of range, two edits
    at one hook) and build the run's edits, sorted by hook."""
    if not specs:
        if keep_error is not None:
            raise UserError("--keep-error/--no-keep-error: no --splice or --ablate to apply it to")
        if where is not None:
            raise UserError("--edit-where: no --splice, --ablate or --steer to apply it to")
        return ()
    if keep_error is not None and all(s.kind == STEER for s in specs):
        raise UserError("--keep-error/--no-keep-error: applies to --splice and --ablate; steering adds to the "
                        "activation and has no error term")
    from arclens.pipeline.eval_sae import check_model
    from arclens.sae import load
    from arclens.sae.edits import ablate, check_latents, check_sae_for_model, splice, steer_latent

    filt, where_text = parse_where(where)
    out: dict[str, RunEdit] = {}
    flags: dict[str, str] = {}
    for spec in specs:
        try:
            sae = load(spec.sae)
            check_sae_for_model(sae, config, spec.flag)
            if not allow_other_model:
                check_model(sae, spec.sae, model, model_path, model_fingerprint)
            latents = check_latents(sae, spec.latents) if spec.latents else []
        except UserError as err:
            raise _reflag(err, spec) from None
        hook = sae.cfg.output_hook
        if hook in out:
            raise UserError(f"{flags[hook]} and {spec.flag} both edit {hook}; give at most one edit per hook "
                            "(edits at different hooks compose)")
        if spec.kind == SPLICE:
            keep = bool(keep_error)
            edit = splice(sae, keep_error=keep, where=filt)
        elif spec.kind == ABLATE:
            keep = True if keep_error is None else keep_error
            edit = ablate(sae, latents, keep_error=keep, where=filt)
        else:
            keep = None
            edit = steer_latent(sae, latents[0], spec.alpha, where=filt)
        record = {"kind": spec.kind, "hook": hook, "sae": _path(spec.sae), "sae_fingerprint": sae_fingerprint(sae),
                  "architecture": sae.cfg.architecture, "d_sae": sae.cfg.d_sae, "latents": latents,
                  "alpha": spec.alpha, "keep_error": keep, "where": where_text}
        out[hook] = RunEdit(hook, edit, json.loads(json.dumps(record)))
        flags[hook] = spec.flag
    return tuple(out[h] for h in sorted(out))


def edits_from_args(args, config, model_path, model_fingerprint: str | None) -> tuple[RunEdit, ...]:
    """The infer command's ``--splice/--ablate/--steer``, ``--keep-error``, ``--edit-where`` and
    ``--allow-other-model`` (absent from a namespace: not given)."""
    specs = parse_specs(getattr(args, "splice", None), getattr(args, "ablate", None), getattr(args, "steer", None))
    return build_edits(specs, config, model=args.model, model_path=model_path, model_fingerprint=model_fingerprint,
                       keep_error=getattr(args, "keep_error", None), where=getattr(args, "edit_where", None),
                       allow_other_model=getattr(args, "allow_other_model", False))


def library_edits(edits: Mapping, n_layers: int) -> tuple[RunEdit, ...]:
    """``infer(settings, edits={hook: Edit})`` from Python: any edit, recorded by its name, filter,
    reads, function and a fingerprint of its params (shapes, dtypes and values of the leaves)."""
    import jax

    from arclens.model.edits import normalize_edits

    out = []
    for hook, edit in normalize_edits(edits, n_layers).items():
        leaves, treedef = jax.tree.flatten(edit.params)
        digest = hashlib.sha256(str(treedef).encode())
        for leaf in leaves:
            a = np.ascontiguousarray(np.asarray(leaf))
            digest.update(f"{a.dtype.str}:{list(a.shape)}".encode())
            digest.update(a.tobytes())
        fn = f"{getattr(edit.fn, '__module__', '?')}.{getattr(edit.fn, '__qualname__', repr(edit.fn))}"
        record = {"kind": edit.name, "hook": hook, "function": fn, "where": repr(edit.where),
                  "reads": list(edit.reads), "params_fingerprint": f"sha256:{digest.hexdigest()}"}
        out.append(RunEdit(hook, edit, record))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Records: what the files say, and what a resume compares


def describe(records: Sequence[Mapping]) -> str:
    """One short phrase for a run's edits: ``none``, or ``ablate SAE latents 1,2 at HOOK; ...``."""
    if not records:
        return "none"
    parts = []
    for r in records:
        text = f"{r['kind']} {r.get('sae', r.get('function', '?'))}"
        if r.get("kind") == ABLATE:
            text += f" latents {','.join(map(str, r['latents']))}"
        elif r.get("kind") == STEER:
            text += f" latent {r['latents'][0]} alpha {r['alpha']:g}"
        if r.get("keep_error") is not None:
            text += " with its error term" if r["keep_error"] else " without its error term"
        if r.get("where") not in (None, "everywhere", "everywhere()"):
            text += f" where {r['where']}"
        parts.append(f"{text} at {r['hook']}")
    return "; ".join(parts)


def differences(old: Sequence[Mapping], new: Sequence[Mapping]) -> list[str]:
    """How two runs' edit records differ, one phrase each (empty: the same edits). The SAE is
    compared by its fingerprint, never by how its path was spelled."""
    if [r.get("hook") for r in old] != [r.get("hook") for r in new]:
        return [f"edits: {describe(old)} there, {describe(new)} now"]
    out = []
    for o, n in zip(old, new, strict=True):
        for key in sorted((set(o) | set(n)) - {"sae"}):
            if o.get(key) != n.get(key):
                what = " (other SAE weights)" if key == "sae_fingerprint" else ""
                out.append(f"edit at {n['hook']}: {key} {o.get(key)!r} there, {n.get(key)!r} now{what}")
    return out
