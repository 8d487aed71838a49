"""Greedy generation throughput: arclens (JAX, KV cache) beside transformers `generate`.

Both sides get the same ARC prompts (arc24's output-from-examples-v1, rendered by arclens) and
generate exactly ``--max-new-tokens`` tokens per prompt (no early stop, so both do the same work);
the number reported is new tokens per second over the whole batch, prefill included, after a
warm-up run that compiles (JAX) or warms the kernels (torch). JAX prefill/decode times are also
reported, and the greedy agreement between the two (informative only: in bf16 two correct
implementations drift apart after a near-tie).

Runs without the arclens venv, with only jax, numpy, safetensors, ml_dtypes, tokenizers,
transformers, torch (and jinja2, which transformers' chat templates need) and no network:

    PYTHONPATH=src python3 benchmarks/generate_throughput.py --device gpu \\
        --model /path/to/Qwen2.5-0.5B --tasks-json arc-agi_evaluation_challenges.json \\
        --batch-size 64 --max-new-tokens 256 --out bench.json

``--random-preset 0.5b`` writes a random-weight 0.5B checkpoint instead of ``--model`` (same
shapes and tokenizer-like vocabulary; fine for throughput). ``--tiny`` is a CPU smoke test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--model", default=None, help="local Hugging Face model directory")
    p.add_argument("--random-preset", default=None, help="write a random checkpoint of this preset (0.5b, tiny)")
    p.add_argument("--tasks-json", default=None, help="ARC tasks file (JSON keyed by id, or JSONL)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--max-prompt-tokens", type=int, default=4096, help="skip longer prompts")
    p.add_argument("--samples-per-task", type=int, default=1,
                   help="augmented prompts taken from each task (1: a spread of lengths, 64 tasks)")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--loop", nargs="+", choices=["while", "python"], default=["while"])
    p.add_argument("--chunk", type=int, default=32)
    p.add_argument("--no-hf", action="store_true", help="skip the transformers side")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per side (best is reported)")
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny random model, small batch")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def synthetic_tasks(n: int, seed: int = 0) -> dict:
    """Small random ARC-shaped tasks, for --tiny without a tasks file."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def grid():
        h, w = rng.integers(2, 6, size=2)
        return rng.integers(0, 10, size=(h, w)).tolist()

    return {f"synthetic{i:03d}": {"train": [{"input": grid(), "output": grid()} for _ in range(2)],
                                  "test": [{"input": grid()}]} for i in range(n)}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.tiny:
        args.random_preset = args.random_preset or "tiny"
        args.batch_size = min(args.batch_size, 4)
        args.max_new_tokens = min(args.max_new_tokens, 16)
        args.dtype = "float32"
    os.environ.setdefault("JAX_PLATFORMS", "cuda" if args.device == "gpu" else "cpu")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np

    from arclens.data.loaders import load_tasks
    from arclens.model.random_checkpoint import write_random_model
    from arclens.prompts import PromptConfig, load_tokenizer, render_samples

    tmp = tempfile.TemporaryDirectory()
    if args.model is None:
        if args.random_preset is None:
            sys.exit("give --model DIR or --random-preset NAME")
        args.model = str(write_random_model(os.path.join(tmp.name, "model"), preset=args.random_preset, seed=0))
    tasks_path = args.tasks_json
    if tasks_path is None:
        if not args.tiny:
            sys.exit("give --tasks-json FILE (ARC tasks; no network here)")
        tasks_path = os.path.join(tmp.name, "tasks.json")
        with open(tasks_path, "w") as f:
            json.dump(synthetic_tasks(8), f)

    tokenizer = load_tokenizer(args.model)
    samples = []
    for s in render_samples(load_tasks(tasks_path), tokenizer, PromptConfig()):
        if len(s.token_ids) <= args.max_prompt_tokens and s.aug_index < args.samples_per_task and s.test_index == 0:
            samples.append(s)
        if len(samples) == args.batch_size:
            break
    if len(samples) < args.batch_size:
        print(f"note: only {len(samples)} prompts of <= {args.max_prompt_tokens} tokens", file=sys.stderr)
    prompts = [s.token_ids for s in samples]
    lens = np.array([len(p) for p in prompts])
    result = {
        "device": args.device, "model": args.model, "random_preset": args.random_preset, "dtype": args.dtype,
        "batch_size": len(prompts), "max_new_tokens": args.max_new_tokens,
        "prompt_tokens": {"min": int(lens.min()), "median": float(np.median(lens)), "max": int(lens.max())},
    }

    jax_tokens = {}
    for loop in args.loop:
        r, toks = bench_jax(args, prompts, loop)
        result[f"jax_{loop}"] = r
        jax_tokens[loop] = toks
        print(f"arclens/JAX ({loop} loop): {r['new_tokens_per_s']:.1f} new tokens/s "
              f"(prefill {r['prefill_s']:.2f} s, decode {r['decode_s']:.2f} s, first run {r['first_run_s']:.1f} s)")
    if len(jax_tokens) == 2:  # the two drivers compute the same greedy tokens
        result["loops_agree"] = all(np.array_equal(a, b) for a, b in zip(jax_tokens["while"], jax_tokens["python"]))
    if not args.no_hf:
        r, toks = bench_hf(args, prompts, tokenizer)
        result["transformers"] = r
        print(f"transformers generate: {r['new_tokens_per_s']:.1f} new tokens/s ({r['device']})")
        ours = jax_tokens[args.loop[0]]
        same = [int(np.argmax(np.r_[a != b, True])) for a, b in zip(ours, toks)]
        result["agreement"] = {"rows_identical": int(sum(s == args.max_new_tokens for s in same)),
                               "mean_identical_prefix": float(np.mean(same))}
        print(f"greedy agreement: {result['agreement']}")
    print_table(result)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result))
    return 0


TABLE_COLUMNS = ["run", "new tokens/s", "wall s", "prefill s", "decode s", "vs transformers"]


def table_rows(result: dict) -> list[list[str]]:
    """The printed table: one row per side that ran (arclens while_loop / Python loop, transformers)."""
    hf = result.get("transformers", {}).get("new_tokens_per_s")
    rows = []
    for key, label in (("jax_while", "arclens generate (while_loop)"), ("jax_python", "arclens Python loop"),
                       ("transformers", "transformers generate")):
        r = result.get(key)
        if r is None:
            continue
        rate = r["new_tokens_per_s"]
        rows.append([label, f"{rate:,.1f}", f"{r['wall_s']:.2f}", f"{r['prefill_s']:.2f}" if "prefill_s" in r else "-",
                     f"{r['decode_s']:.2f}" if "decode_s" in r else "-", f"{rate / hf:.2f}x" if hf else "-"])
    return rows


def print_table(result: dict) -> None:
    rows = table_rows(result)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(TABLE_COLUMNS)]
    print(f"generate throughput ({result['device']}, {result['dtype']}, batch {result['batch_size']}, "
          f"{result['max_new_tokens']} new tokens)")
    print("  ".join(h.ljust(w) for h, w in zip(TABLE_COLUMNS, widths)))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


def python_loop(params, config, prompts, max_new_tokens: int, stats):
    """The Python-loop driver ``generate()`` used to offer as ``loop="python"``, kept here where it
    is measured against generate()'s while_loop: the same prefill (``generate._start``), then one
    jitted decode step per token (``generate._step``), no early exit and no compaction (nothing
    stops early in this benchmark). Returns each row's tokens."""
    from functools import partial

    import jax
    import jax.numpy as jnp
    import numpy as np

    from arclens.model import generate as g

    @partial(jax.jit, static_argnames=("config",), donate_argnums=(1,))
    def one_step(params, st, eos, max_new, *, config):
        return g._step(params, config, (), max_new, eos, None, None, st)

    b = len(prompts)
    lens = np.array([len(p) for p in prompts], np.int32)
    t = g._bucket(int(lens.max()), 64)
    tokens = np.zeros((b, t), np.int32)
    for r, p in enumerate(prompts):
        tokens[r, : len(p)] = p
    eos, max_new = jnp.zeros((0,), jnp.int32), jnp.int32(max_new_tokens)
    t0 = time.perf_counter()
    st, tok, _, _ = g._start(params, jnp.asarray(tokens), jnp.asarray(lens), eos, None, None,
                             jnp.full((b,), 2, jnp.int32), max_new, jnp.zeros((b,), bool), config=config, hooks=(),
                             cache_len=g._bucket(t + max_new_tokens, 64))
    out = [tok]
    jax.block_until_ready(tok)
    stats.prefill_s += time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(max_new_tokens - 1):
        st, tok, _, _, _ = one_step(params, st, eos, max_new, config=config)
        out.append(tok)
    toks = np.stack([np.asarray(x) for x in out], 1)
    stats.decode_s += time.perf_counter() - t0
    stats.new_tokens += toks.size
    return list(toks)


def bench_jax(args, prompts, loop):
    import jax
    import jax.numpy as jnp

    from arclens.model.config import QwenConfig
    from arclens.model.generate import GenerateStats, generate
    from arclens.model.loading import load_params

    config = QwenConfig.from_pretrained(args.model)
    params = load_params(args.model, config, {"bfloat16": jnp.bfloat16, "float32": jnp.float32}[args.dtype])

    def run():
        stats = GenerateStats()
        t0 = time.perf_counter()
        if loop == "python":
            toks = python_loop(params, config, prompts, args.max_new_tokens, stats)
            return time.perf_counter() - t0, stats, toks
        out = dict(generate(params, config, prompts, max_new_tokens=args.max_new_tokens, batch_size=len(prompts),
                            chunk=args.chunk, stats=stats))
        return time.perf_counter() - t0, stats, [out[i].token_ids for i in range(len(prompts))]

    first, _, _ = run()  # compiles
    best = None
    for _ in range(args.repeats):
        wall, stats, toks = run()
        if best is None or wall < best[0]:
            best = (wall, stats, toks)
    wall, stats, toks = best
    return {
        "backend": jax.default_backend(), "loop": loop, "wall_s": wall, "first_run_s": first,
        "prefill_s": stats.prefill_s, "decode_s": stats.decode_s, "new_tokens": stats.new_tokens,
        "new_tokens_per_s": stats.new_tokens / wall, "decode_tokens_per_s": stats.new_tokens / stats.decode_s,
    }, toks


def bench_hf(args, prompts, tokenizer):
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if args.device == "gpu" and torch.cuda.is_available() else "cpu"
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, attn_implementation="sdpa").to(device).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad, np.int64)
    mask = np.zeros_like(ids)
    for r, p in enumerate(prompts):  # left padding, as transformers wants for batched generation
        ids[r, width - len(p):] = p
        mask[r, width - len(p):] = 1
    ids, mask = torch.tensor(ids, device=device), torch.tensor(mask, device=device)

    def run(n_new):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_new, min_new_tokens=n_new,
                                 do_sample=False, pad_token_id=pad, eos_token_id=None)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, out[:, width:].cpu().numpy()

    run(2)  # warm-up
    best = None
    for _ in range(args.repeats):
        wall, toks = run(args.max_new_tokens)
        if best is None or wall < best[0]:
            best = (wall, toks)
    wall, toks = best
    n = toks.shape[0] * toks.shape[1]
    return {"device": device, "torch": torch.__version__, "wall_s": wall, "new_tokens": int(n),
            "new_tokens_per_s": n / wall}, list(toks)


if __name__ == "__main__":
    sys.exit(main())
