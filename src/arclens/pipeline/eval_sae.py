"""`arclens eval-sae`: how much of the model an SAE keeps when it is spliced in (SPEC.md section 6).

It runs arc24's training prompts (``--with-answer``: the test output is in the prompt, as arc24
fine-tunes on it) and measures, pooled over tokens, the next-token cross-entropy of the clean
model and of the model with the SAE's hook replaced by its reconstruction (``spliced``), by zeros
(``zero``) and by the hook's mean activation (``mean``), on every predicted token (``all``) and on
the tokens of the assistant's reply (``answer``); the loss recovered
``(zero - spliced) / (zero - clean)``; KL(clean || spliced); and the SAE's FVU, L0 and dead
fraction on the same tokens. A transcoder reads its input hook and is spliced at its output hook.
The device side is pipeline/eval_sae_metrics.py. Bad input (tasks without test outputs, an SAE
for another model, width or hook) is one line and exit 2, before anything is computed or written;
the JSON is written whole (data/atomic.py: a temporary file and a rename).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from arclens.errors import UserError
from arclens.pipeline.eval_sae_metrics import VARIANTS, eval_prompts, evaluate

DEFAULT_TOKENS_PER_BATCH = {"cpu": 4096}
DEFAULT_TOKENS_PER_BATCH_ACCEL = 16384  # four forward passes of activations live at once


@dataclass
class EvalSettings:
    sae_dir: str
    model: str
    model_path: Path
    config: object  # QwenConfig
    dtype: str
    prompt: object  # PromptConfig (with_answer=True)
    tasks: list
    tasks_source: str
    out: Path
    tokens_per_batch: int | None = None
    model_fingerprint: str | None = None
    sae: object = None  # the loaded SAE (checked against the model)


# ---------------------------------------------------------------------------------------------
# The command


def _read_provenance(sae_dir: str) -> dict:
    """The SAE folder's ``arclens.json`` (an arclens export), or {} (an SAE trained elsewhere)."""
    from arclens.store import fs as storefs

    try:
        fs, root = storefs.get_fs(sae_dir, None)
        return json.loads(storefs.read_bytes(fs, storefs.join(root, "arclens.json")))
    except (FileNotFoundError, ValueError):
        return {}


def _fingerprints(obj) -> set[str]:
    """Every model fingerprint (``sampled-sha256-...:hex``, model/fingerprint.py) found under a key
    naming a fingerprint anywhere in a provenance record."""
    found = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, str) and "fingerprint" in k and v.startswith("sampled-sha256"):
                found.add(v)
            else:
                found |= _fingerprints(v)
    elif isinstance(obj, list):
        for v in obj:
            found |= _fingerprints(v)
    return found


def _names(*names) -> set[str]:
    out = set()
    for n in names:
        if n:
            n = str(n).rstrip("/")
            out |= {n.lower(), n.rsplit("/", 1)[-1].lower()}
    return out


def check_model(sae, sae_dir: str, model: str, model_path: Path, fingerprint: str | None) -> None:
    """UserError if the SAE was made for another model: by the model fingerprint its arclens.json
    records (arclens exports), else by ``metadata.model_name`` against --model, its folder and the
    checkpoint's ``_name_or_path`` (SAELens folders; the last path component is enough)."""
    scheme = (fingerprint or "").partition(":")[0]
    recorded = {f for f in _fingerprints(_read_provenance(sae_dir)) if f.partition(":")[0] == scheme}
    if recorded and fingerprint:  # fingerprints of another scheme cannot be compared: use the name
        if fingerprint not in recorded:
            raise UserError(f"--sae {sae_dir}: trained on another model than --model {model} (its arclens.json "
                            "records another model fingerprint)")
        return
    name = sae.cfg.model_name
    if not name:
        return
    try:
        hf_name = json.loads((model_path / "config.json").read_text()).get("_name_or_path")
    except (OSError, ValueError):
        hf_name = None
    if not _names(name) & _names(model, str(model_path), hf_name):
        raise UserError(f"--sae {sae_dir}: made for model {name!r} (cfg.json metadata.model_name), not "
                        f"--model {model}; pass --allow-other-model if they are the same weights under another name")


def validate(args) -> EvalSettings:
    from dataclasses import replace

    from arclens.data.loaders import load_tasks
    from arclens.model.config import QwenConfig
    from arclens.model.fingerprint import model_fingerprint
    from arclens.model.loading import resolve_model
    from arclens.prompts import PromptConfig
    from arclens.sae import load
    from arclens.sae.edits import check_sae_for_model

    prompt = replace(PromptConfig.from_args(args), with_answer=True)  # arc24's training prompts
    prompt.validate()
    if args.tokens_per_batch is not None and args.tokens_per_batch < 1:
        raise UserError(f"--tokens-per-batch: expected a positive number, got {args.tokens_per_batch}")
    tasks = load_tasks(args.tasks, args.solutions, args.max_tasks)
    missing = [t.task_id for t in tasks if any(e.output is None for e in t.test)]
    if missing:
        raise UserError(f"--tasks {args.tasks}: {len(missing)} of {len(tasks)} tasks have no test outputs (first: "
                        f"{missing[0]}); eval-sae scores arc24's training prompts, which contain the answers "
                        "(give --solutions FILE, or tasks with their test outputs)")
    sae = load(args.sae)
    model_path = resolve_model(args.model)
    config = QwenConfig.from_pretrained(model_path)
    check_sae_for_model(sae, config, f"--sae {args.sae}")
    fingerprint = model_fingerprint(model_path)
    if not args.allow_other_model:
        check_model(sae, args.sae, args.model, model_path, fingerprint)
    out = Path(args.out)
    _check_writable(out)
    return EvalSettings(sae_dir=args.sae, model=args.model, model_path=model_path, config=config, dtype=args.dtype,
                        prompt=prompt, tasks=tasks, tasks_source=args.tasks, out=out,
                        tokens_per_batch=args.tokens_per_batch, model_fingerprint=fingerprint, sae=sae)


def _check_writable(out: Path) -> None:
    """Before any work: --out's folder exists (or is created) and takes a file."""
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; expected a .json file path")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({e.strerror})") from None


def _default_tokens_per_batch() -> int:
    import jax

    return DEFAULT_TOKENS_PER_BATCH.get(jax.default_backend(), DEFAULT_TOKENS_PER_BATCH_ACCEL)


class _Progress:
    """A rich bar on a terminal; elsewhere a line on stderr every 30 s."""

    def __init__(self):
        self._bar = None
        self._last = time.monotonic()
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress

            self._bar = Progress(console=Console(file=sys.stderr), transient=True)
            self._bar.start()
            self._tasks = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        label = {"mean": "mean pass (up to the hook)", "eval": "clean / spliced / zero / mean"}[stage]
        if self._bar is not None:
            if stage not in self._tasks:
                self._tasks[stage] = self._bar.add_task(label, total=total)
            self._bar.update(self._tasks[stage], completed=done)
        elif time.monotonic() - self._last >= 30 or done == total:
            self._last = time.monotonic()
            print(f"arclens eval-sae: {label}: batch {done}/{total}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def run(s: EvalSettings, *, progress: bool = True) -> dict:
    """Render, evaluate, and return the JSON record (SPEC.md section 6 keys plus extras)."""
    import jax.numpy as jnp

    from arclens import __version__
    from arclens.model.loading import load_params
    from arclens.prompts import load_tokenizer, render_samples

    tokenizer = load_tokenizer(str(s.model_path))
    prompts = eval_prompts(list(render_samples(s.tasks, tokenizer, s.prompt)), tokenizer)
    params = load_params(s.model_path, s.config, {"bfloat16": jnp.bfloat16, "float32": jnp.float32}[s.dtype])
    bar = _Progress() if progress else None
    try:
        metrics = evaluate(s.sae, params, s.config, prompts,
                           tokens_per_batch=s.tokens_per_batch or _default_tokens_per_batch(), progress=bar)
    except Exception as err:
        from arclens.errors import device_out_of_memory

        raise device_out_of_memory(err, "an eval-sae batch", "lower --tokens-per-batch") from err
    finally:
        if bar is not None:
            bar.close()
    cfg = s.sae.cfg
    return {
        **metrics,
        "sae": s.sae_dir,
        "model": {"name": s.model, "path": str(s.model_path), "fingerprint": s.model_fingerprint,
                  "config": s.config.to_json(), "dtype": s.dtype},
        "tasks": {"source": s.tasks_source, "count": len(s.tasks), "samples": len(prompts)},
        "prompt": s.prompt.to_json(),
        "hook": cfg.hook_name,
        "hook_out": cfg.output_hook,
        "architecture": cfg.architecture,
        "d_sae": cfg.d_sae,
        "arclens_version": __version__,
    }


def _fmt(x, digits=4) -> str:
    if x is None:
        return "n/a"
    if x != 0 and abs(x) < 10 ** -(digits - 1):  # e.g. a small KL: keep its digits
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}f}"


def print_table(result: dict, file=None) -> None:
    from rich.console import Console
    from rich.table import Table

    n = result["n_tokens"]
    where = result["hook"] if result["hook_out"] == result["hook"] else f"{result['hook']} -> {result['hook_out']}"
    table = Table(title=f"eval-sae: {result['architecture']} SAE, {result['d_sae']} latents, at {where}")
    table.add_column("")
    table.add_column(f"all tokens ({n['all']:,})", justify="right")
    table.add_column(f"answer tokens ({n['answer']:,})", justify="right")
    for v in VARIANTS:
        table.add_row(f"CE {v} (nats)", _fmt(result["ce"]["all"][v]), _fmt(result["ce"]["answer"][v]))
    table.add_row("loss recovered", _fmt(result["loss_recovered"]["all"]), _fmt(result["loss_recovered"]["answer"]))
    table.add_row("KL(clean || spliced)", _fmt(result["kl"]["all"]), _fmt(result["kl"]["answer"]))
    table.add_row("FVU", _fmt(result["fvu"]), "")
    table.add_row("L0", _fmt(result["l0"], 2), "")
    table.add_row("dead fraction", f"{result['dead_frac']:.2%} ({result['dead_latents']} latents)", "")
    Console(file=file or sys.stdout, width=100).print(table)


def main(args) -> int:
    settings = validate(args)
    from arclens.pipeline.compile_cache import enable_compile_cache

    enable_compile_cache()
    from arclens.data.atomic import replace_atomically

    result = run(settings)
    replace_atomically(settings.out, json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wrote {settings.out}")
    return 0
