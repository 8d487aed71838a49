"""`arclens toy-model`: a TOY tiny Qwen2 trained from scratch on arc24's training prompts, on CPU.

Random weights give meaningless features, and a real Qwen2.5 does not fit a laptop demo, so the
demo studies this: the `tiny` preset of `arclens random-model` (hidden 64, 4 layers, its 1024-id
byte-level BPE tokenizer and Qwen2.5 chat template), trained for a few CPU minutes with
next-token loss on the answer tokens (everything after the last assistant header) of
`--with-answer` prompts, augmented as arc24 augments them. It learns much of the answer's format
(shape line, row numbers, line ends) and something of its colours (docs/TOY_MODEL.md has the
held-out numbers), which gives an SAE structure to find: features with ARC roles rather than the
noise of random weights. The folder is a Hugging Face checkpoint (transformers loads it) whose
config.json says `"arclens_toy": {...}` (what it was trained on) and whose README says TOY.

The run is a pure function of its flags (--seed fixes the initial weights, the augmentations and
the batch order; XLA on CPU is deterministic). Nothing is written to DIR until training ends:
the checkpoint is assembled in a sibling folder and renamed into place. SIGTERM or Ctrl-C stops
between steps; the model trained so far is saved, labelled with the steps it had, and the exit
status is 143 / 130.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from arclens.errors import UserError
from arclens.pipeline.toy_training import evaluate, make_examples, train

TOY_NOTE = ("TOY MODEL trained by `arclens toy-model`: a tiny Qwen2 trained for minutes on ARC prompts; "
            "its features illustrate the tools, they say nothing about any real language model.")


@dataclass(frozen=True)
class ToySettings:
    out: Path
    tasks_source: str
    solutions: str | None = None
    max_tasks: int | None = None
    steps: int = 300
    batch_tokens: int = 4096
    lr: float = 1e-2
    warmup: int = 20
    seed: int = 0
    max_prompt_tokens: int = 1024
    prompt_version: str = "output-from-examples-v1"
    encoder: str = "GridShapeEncoder(RowNumberEncoder(MinimalGridEncoder()))"
    predictions_per_task: int = 8
    augment: bool = True
    eval_tasks: str | None = "arc-agi-1/evaluation"
    eval_prompts: int = 64
    log_every_s: float = 10.0

    def prompt_config(self, augment: bool | None = None):
        from arclens.prompts import PromptConfig

        return PromptConfig(version=self.prompt_version, encoder=self.encoder,
                            predictions_per_task=self.predictions_per_task, seed=self.seed,
                            augment=self.augment if augment is None else augment, with_answer=True)

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in ("out", "log_every_s")}
        return d


# ---------------------------------------------------------------------------------------------
# Hugging Face layout


def params_to_hf(params, config) -> dict[str, np.ndarray]:
    """Our einsum-ready arrays back to Hugging Face's tensors: the inverse of each ParamSpec's
    split-then-transpose (model/params.py), so the one table defines both directions."""
    from arclens.model.params import layer_table, top_table

    def back(arr, spec) -> np.ndarray:
        a = np.asarray(arr, np.float32)
        if spec.perm is not None:
            a = np.transpose(a, np.argsort(spec.perm))
        return np.ascontiguousarray(a.reshape(spec.hf_shape))

    out = {spec.hf_name: back(getattr(params, name), spec) for name, spec in top_table(config).items()}
    for i, layer in enumerate(params.layers):
        for name, spec in layer_table(config, i).items():
            out[spec.hf_name] = back(getattr(layer, name), spec)
    return out


def _readme(info: dict) -> str:
    s, ev = info["settings"], info.get("eval")
    lines = [f"# {TOY_NOTE}", "",
             (f"- trained on: `{info['tasks']['source']}` ({info['tasks']['count']} tasks, "
              f"{info['examples']} prompts of at most {s['max_prompt_tokens']} tokens)"),
             (f"- steps: {info['steps_done']} of {s['steps']}, {info['tokens_seen']:,} tokens, "
              f"seed {s['seed']}, lr {s['lr']}")]
    if info.get("stopped_by"):
        lines.append(f"- STOPPED EARLY by {info['stopped_by']}")
    if ev:
        t = ev["report"]["trained"]
        lines += [(f"- answer loss on `{ev['tasks']}` ({ev['examples']} held-out prompts): "
                  f"{ev['trained']:.3f} nats, against {ev['random_init']:.3f} for its random initial weights"),
                  (f"- on those answers it predicts {100 * t['cell_accuracy']:.1f}% of the grid cells right "
                   f"(guessing the test input's commonest colour everywhere: "
                   f"{100 * t['cell_accuracy_test_input_mode']:.1f}%) and {100 * t['rest_accuracy']:.1f}% of the "
                   "other tokens (shape line, row numbers, line ends)")]
    lines += ["", ("Written by `arclens toy-model`; see docs/TOY_MODEL.md. Loads with "
                   "`transformers.AutoModelForCausalLM.from_pretrained(this_dir)`."), ""]
    return "\n".join(lines)


def save_toy_model(staging: Path, params, config, info: dict) -> None:
    """Turn the random checkpoint in ``staging`` into the toy: trained weights, config label, README."""
    from safetensors.numpy import save_file

    tmp = staging / ".model.safetensors.tmp"
    save_file(params_to_hf(params, config), str(tmp), metadata={"format": "pt"})
    os.replace(tmp, staging / "model.safetensors")
    cfg_path = staging / "config.json"
    hf = json.loads(cfg_path.read_text())
    hf.pop("arclens_random", None)
    hf.update({"arclens_toy": info, "arclens_note": TOY_NOTE})
    cfg_path.write_text(json.dumps(hf, indent=2) + "\n")
    (staging / "README.md").write_text(_readme(info))


# ---------------------------------------------------------------------------------------------
# the command


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: exists and is not an empty directory; toy-model writes a new one")
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent  # missing parents are made once the settings are checked
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{out}: {ancestor} is not a writable directory")


def run(settings: ToySettings, log=print, stop=None) -> dict:
    """Validate, train, evaluate, save; returns the ``arclens_toy`` record written to config.json."""
    import jax.numpy as jnp

    from arclens.data.loaders import load_tasks
    from arclens.model.config import QwenConfig
    from arclens.model.loading import load_params
    from arclens.model.random_checkpoint import write_random_model
    from arclens.prompts import load_tokenizer

    for flag, v in (("--steps", settings.steps), ("--batch-tokens", settings.batch_tokens),
                    ("--max-prompt-tokens", settings.max_prompt_tokens)):
        if v < 1:
            raise UserError(f"{flag}: expected a positive number, got {v}")
    if not settings.lr > 0:
        raise UserError(f"--lr: expected a positive number, got {settings.lr}")
    t_start = time.perf_counter()
    out = Path(settings.out)
    _check_out(out)
    settings.prompt_config().validate()
    tasks = load_tasks(settings.tasks_source, settings.solutions, settings.max_tasks)
    eval_tasks = load_tasks(settings.eval_tasks) if settings.eval_tasks and settings.eval_prompts > 0 else []
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]  # removed again on failure
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        write_random_model(staging, preset="tiny", seed=settings.seed)
        tokenizer = load_tokenizer(str(staging))
        examples, skipped = make_examples(tasks, tokenizer, settings.prompt_config(), settings.max_prompt_tokens)
        if not examples:
            raise UserError(f"--tasks {settings.tasks_source}: no prompt has at most --max-prompt-tokens "
                            f"{settings.max_prompt_tokens} tokens")
        log(f"toy-model: {len(examples)} training prompts from {len(tasks)} tasks "
            f"({skipped} longer than {settings.max_prompt_tokens} tokens left out; "
            f"rendered in {time.perf_counter() - t_start:.0f} s)")
        config = QwenConfig.from_pretrained(staging)
        init = load_params(staging, config, dtype=jnp.float32)
        # The first --eval-prompts prompts (by task id, unaugmented) within the same length limit.
        held_out = (make_examples(eval_tasks, tokenizer, settings.prompt_config(augment=False),
                                  settings.max_prompt_tokens)[0][:settings.eval_prompts] if eval_tasks else [])
        before = evaluate(init, config, held_out) if held_out else None
        log(f"toy-model: training {settings.steps} steps of {settings.batch_tokens} padded tokens "
            f"(lr {settings.lr}, seed {settings.seed})")
        t_train = time.perf_counter()
        result = train(init, config, examples, steps=settings.steps, batch_tokens=settings.batch_tokens,
                       lr=settings.lr, warmup=settings.warmup, seed=settings.seed, stop=stop, log=log,
                       log_every_s=settings.log_every_s)
        log(f"toy-model: {result.steps_done} steps in {time.perf_counter() - t_train:.0f} s")
        info = {"tasks": {"source": settings.tasks_source, "count": len(tasks)}, "examples": len(examples),
                "settings": settings.to_json(), "steps_done": result.steps_done,
                "tokens_seen": result.tokens_seen, "stopped_by": result.stopped_by, "history": result.history}
        if held_out:
            after = evaluate(result.params, config, held_out)
            info["eval"] = {"tasks": settings.eval_tasks, "examples": len(held_out),
                            "random_init": before["loss"], "trained": after["loss"],
                            "report": {"trained": after, "random_init": before}}
            log(f"toy-model: answer loss on {len(held_out)} held-out {settings.eval_tasks} prompts: "
                f"{after['loss']:.3f} nats (random initial weights: {before['loss']:.3f}); answer cells right "
                f"{100 * after['cell_accuracy']:.1f}% (the test input's commonest colour: "
                f"{100 * after['cell_accuracy_test_input_mode']:.1f}%), other answer tokens right "
                f"{100 * after['rest_accuracy']:.1f}%")
        save_toy_model(staging, result.params, config, info)
        if out.exists():
            out.rmdir()  # checked empty above
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in made:  # innermost first; only the folders this run made, and only if empty
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    return info


def settings_from_args(args) -> ToySettings:
    return ToySettings(
        out=Path(args.dir), tasks_source=args.tasks, solutions=args.solutions, max_tasks=args.max_tasks,
        steps=args.steps, batch_tokens=args.batch_tokens, lr=args.lr, warmup=args.warmup, seed=args.seed,
        max_prompt_tokens=args.max_prompt_tokens, prompt_version=args.prompt_version, encoder=args.encoder,
        predictions_per_task=args.predictions_per_task, augment=not args.no_augment,
        eval_tasks=None if args.eval_tasks in (None, "", "none") else args.eval_tasks,
        eval_prompts=args.eval_prompts,
    )


def main(args) -> int:
    from arclens.pipeline.stopping import StopRequest

    settings = settings_from_args(args)
    stop = StopRequest()
    with stop.installed():
        info = run(settings, log=lambda m: print(m, file=sys.stderr, flush=True), stop=stop)
    print(f"wrote {settings.out} -- {TOY_NOTE}")
    if info["stopped_by"]:
        print(f"stopped by {info['stopped_by']} after {info['steps_done']} of {settings.steps} steps; "
              "the model trained so far is saved (labelled so)", file=sys.stderr)
        return 130 if info["stopped_by"] == "SIGINT" else 143
    return 0
