#!/usr/bin/env python3
"""Our JAX Qwen2 against transformers on a GPU: bf16 (XLA and cuDNN attention) and fp32.

Run on a GPU machine with jax[cuda], torch and transformers installed, no network needed:

    PYTHONPATH=src python3 benchmarks/model_equivalence_gpu.py            # Qwen2.5-0.5B shapes
    PYTHONPATH=src python3 benchmarks/model_equivalence_gpu.py --tiny --cpu   # smoke test

It writes a RANDOM-weight checkpoint with Qwen2.5-0.5B's shapes (bf16 safetensors, numpy only),
runs one right-padded batch of random token ids through

  - transformers Qwen2ForCausalLM in float32 (TF32 off): the reference,
  - transformers in bfloat16 (its default attention, sdpa): the baseline a bf16 user gets,
  - ours in bfloat16 with attn_impl="xla" and attn_impl="cudnn",
  - ours in float32 with matmul precision "highest",

and prints ||a - b|| / ||b|| over the real (unpadded) tokens, per hook (every kind at the first,
a middle and the last layer) and for the logits. A path that cannot run (e.g. cuDNN on CPU) is
reported, never fatal. With $OUT (or --out) set, the table is also written there as
model_equivalence.md and model_equivalence.json.

Exit status: 1 if ours-fp32 vs HF-fp32 exceeds 1e-4 on any tensor (the CPU test's bound), else 0.
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
from contextlib import nullcontext
from pathlib import Path

FP32_TOL = 1e-4
KINDS = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")
# Qwen2.5-0.5B (hidden, intermediate, heads, kv heads, vocab, tied); layers from --layers.
SHAPE_05B = {"hidden": 896, "inter": 4864, "heads": 14, "kv_heads": 2, "vocab": 151936, "tied": True}
SHAPE_TINY = {"hidden": 64, "inter": 160, "heads": 4, "kv_heads": 2, "vocab": 512, "tied": True}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes, short prompts (smoke test)")
    ap.add_argument("--cpu", action="store_true", help="run JAX and torch on CPU")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default 24; --tiny: 3)")
    ap.add_argument("--lengths", type=int, nargs="+", default=None,
                    help="prompt lengths of the right-padded batch (default 1536 1024 700 333; --tiny: 64 40 33)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timing-iters", type=int, default=5)
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for the .md/.json results (default $OUT)")
    ap.add_argument("--model-dir", default=None, help="write the checkpoint here (default: a temp dir)")
    return ap.parse_args(argv)


def write_checkpoint(dest: Path, shape: dict, layers: int, seed: int) -> None:
    """A random Qwen2 checkpoint in HF layout, bf16 as Qwen2.5 ships. Linear weights have
    unit-variance outputs (q and k halved, so attention is peaked but not one-hot); biases and
    norm weights are random too, so each of them matters."""
    import ml_dtypes
    import numpy as np
    from safetensors.numpy import save_file

    d, f, v, hq, hkv = shape["hidden"], shape["inter"], shape["vocab"], shape["heads"], shape["kv_heads"]
    hd = d // hq
    rng = np.random.default_rng(seed)
    bf16 = ml_dtypes.bfloat16

    def lin(out_f, in_f, scale=1.0):
        return (rng.standard_normal((out_f, in_f), dtype=np.float32) * (scale / np.sqrt(in_f))).astype(bf16)

    def vec(n, mean, std):
        return (mean + std * rng.standard_normal(n, dtype=np.float32)).astype(bf16)

    t = {"model.embed_tokens.weight": rng.standard_normal((v, d), dtype=np.float32).astype(bf16)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = vec(d, 1.0, 0.2)
        t[p + "post_attention_layernorm.weight"] = vec(d, 1.0, 0.2)
        t[p + "self_attn.q_proj.weight"] = lin(hq * hd, d, 0.5)
        t[p + "self_attn.q_proj.bias"] = vec(hq * hd, 0.0, 0.5)
        t[p + "self_attn.k_proj.weight"] = lin(hkv * hd, d, 0.5)
        t[p + "self_attn.k_proj.bias"] = vec(hkv * hd, 0.0, 0.5)
        t[p + "self_attn.v_proj.weight"] = lin(hkv * hd, d)
        t[p + "self_attn.v_proj.bias"] = vec(hkv * hd, 0.0, 0.5)
        t[p + "self_attn.o_proj.weight"] = lin(d, hq * hd)
        t[p + "mlp.gate_proj.weight"] = lin(f, d)
        t[p + "mlp.up_proj.weight"] = lin(f, d)
        t[p + "mlp.down_proj.weight"] = lin(d, f)
    t["model.norm.weight"] = vec(d, 1.0, 0.2)
    if not shape["tied"]:
        t["lm_head.weight"] = lin(v, d)
    dest.mkdir(parents=True, exist_ok=True)
    save_file(t, str(dest / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
        "hidden_size": d, "intermediate_size": f, "num_hidden_layers": layers,
        "num_attention_heads": hq, "num_key_value_heads": hkv, "vocab_size": v,
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "sliding_window": 32768, "use_sliding_window": False, "max_window_layers": layers,
        "tie_word_embeddings": shape["tied"], "torch_dtype": "bfloat16", "attention_dropout": 0.0,
        "bos_token_id": 0, "eos_token_id": 0, "use_cache": True,
        "arclens_random": True, "arclens_note": "RANDOM WEIGHTS (benchmarks/model_equivalence_gpu.py)",
    }
    (dest / "config.json").write_text(json.dumps(config, indent=2))


def hf_captures(model_dir, dtype, device, tokens, mask, layers):
    """transformers' captures through forward hooks on its own modules (SPEC.md section 1),
    returned as float32 numpy; the raw last-layer output, never hidden_states[-1]."""
    import numpy as np
    import torch
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(device).eval()
    caps, handles = {}, []

    def first(x):
        return x[0] if isinstance(x, (tuple, list)) else x

    def put(name, x):
        caps[name] = x.detach().float().cpu().numpy()

    for i in layers:
        layer, p = model.model.layers[i], f"blocks.{i}.hook_"
        handles += [
            layer.register_forward_pre_hook(
                lambda m, a, kw, n=p + "resid_pre": put(n, a[0] if a else kw["hidden_states"]), with_kwargs=True),
            layer.register_forward_hook(lambda m, a, o, n=p + "resid_post": put(n, first(o))),
            layer.self_attn.register_forward_hook(lambda m, a, o, n=p + "attn_out": put(n, o[0])),
            layer.post_attention_layernorm.register_forward_pre_hook(
                lambda m, a, kw, n=p + "resid_mid": put(n, a[0] if a else kw["hidden_states"]), with_kwargs=True),
            layer.mlp.register_forward_hook(lambda m, a, o, n=p + "mlp_out": put(n, first(o))),
        ]
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(tokens, dtype=torch.long, device=device),
                    attention_mask=torch.as_tensor(mask, device=device), use_cache=False)
        put("logits", out.logits)
    for h in handles:
        h.remove()
    attn = getattr(model.config, "_attn_implementation", "?")
    del model, out
    if device != "cpu":
        torch.cuda.empty_cache()
    return caps, attn, np


def rel_err(a, b, lengths) -> float:
    import numpy as np

    num = den = 0.0
    for row, n in enumerate(lengths):
        x = np.asarray(a[row, :n], np.float64)
        y = np.asarray(b[row, :n], np.float64)
        num += float(np.sum((x - y) ** 2))
        den += float(np.sum(y**2))
    return (num / den) ** 0.5 if den else float("nan")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cpu:
        os.environ["JAX_PLATFORMS"] = "cpu"
    # JAX would otherwise take 75% of the GPU at start-up and leave torch nothing.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

    import numpy as np
    import torch

    shape = SHAPE_TINY if args.tiny else SHAPE_05B
    n_layers = args.layers or (3 if args.tiny else 24)
    lengths = args.lengths or ([64, 40, 33] if args.tiny else [1536, 1024, 700, 333])
    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference must be fp32
    torch.backends.cudnn.allow_tf32 = False

    tmp = None
    if args.model_dir:
        model_dir = Path(args.model_dir)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="arclens-equiv-")
        model_dir = Path(tmp.name) / "model"
    t0 = time.time()
    if not (model_dir / "config.json").exists():
        write_checkpoint(model_dir, shape, n_layers, args.seed)
    print(f"checkpoint {model_dir} ({time.time() - t0:.1f}s)", flush=True)

    layers = sorted({0, n_layers // 2, n_layers - 1})
    rng = np.random.default_rng(args.seed + 1)
    t_max = max(lengths)
    mask = (np.arange(t_max)[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
    tokens = np.where(mask > 0, rng.integers(0, shape["vocab"], (len(lengths), t_max)), 0).astype(np.int32)
    names = [f"blocks.{i}.hook_{k}" for i in layers for k in KINDS] + ["logits"]

    # transformers first, then free its GPU memory for JAX.
    ref32, attn32, _ = hf_captures(model_dir, torch.float32, device, tokens, mask, layers)
    ref16, attn16, _ = hf_captures(model_dir, torch.bfloat16, device, tokens, mask, layers)
    print(f"transformers done (attention: {attn16}) ({time.time() - t0:.1f}s)", flush=True)

    import jax
    import jax.numpy as jnp

    from arclens.model.attention import resolve_impl
    from arclens.model.config import QwenConfig
    from arclens.model.hooks import Hook
    from arclens.model.loading import load_params
    from arclens.model.qwen import forward_jit

    cfg = QwenConfig.from_pretrained(model_dir)
    hooks = tuple(Hook(i, k) for i in layers for k in KINDS)
    capture_hooks = tuple(Hook(i, "resid_post") for i in layers)
    jt, jl = jnp.asarray(tokens), jnp.asarray(lengths, jnp.int32)
    ours: dict[str, dict | str] = {}
    timings: dict[str, dict | str] = {}

    def run(label, params, impl, precision=None):
        try:
            with _matmul_precision(jax, precision):
                out = forward_jit(params, cfg, jt, jl, hooks=hooks, logits=True, attn_impl=impl)
                ours[label] = {k: np.asarray(v.astype(jnp.float32)) for k, v in out.items()}
                del out
                f = lambda: forward_jit(params, cfg, jt, jl, hooks=capture_hooks, attn_impl=impl)
                jax.block_until_ready(f())
                ts = []
                for _ in range(args.timing_iters):
                    s = time.perf_counter()
                    jax.block_until_ready(f())
                    ts.append(time.perf_counter() - s)
                ms = 1e3 * float(np.median(ts))
                timings[label] = {"ms_per_batch": ms, "real_tokens_per_s": sum(lengths) / (ms / 1e3)}
        except Exception as e:  # noqa: BLE001 - report any failure of one path, keep the others
            ours[label] = f"unavailable: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
            timings[label] = ours[label]
            traceback.print_exc(limit=3)
        print(f"{label}: {'ok' if isinstance(ours[label], dict) else ours[label]}", flush=True)

    p16 = load_params(model_dir, cfg, jnp.bfloat16)
    run("ours bf16 xla", p16, "xla")
    run("ours bf16 cudnn", p16, "cudnn")
    auto = resolve_impl("auto", jnp.bfloat16)
    del p16
    p32 = load_params(model_dir, cfg, jnp.float32)
    run("ours fp32 xla (highest)", p32, "xla", precision="highest")
    del p32

    comparisons = [
        ("ours bf16 xla vs HF bf16", "ours bf16 xla", ref16),
        ("ours bf16 cudnn vs HF bf16", "ours bf16 cudnn", ref16),
        ("ours bf16 xla vs HF fp32", "ours bf16 xla", ref32),
        ("ours bf16 cudnn vs HF fp32", "ours bf16 cudnn", ref32),
        ("HF bf16 vs HF fp32 (baseline)", ref16, ref32),
        ("ours fp32 vs HF fp32", "ours fp32 xla (highest)", ref32),
    ]
    table: dict[str, dict[str, float | str]] = {}
    for col, a, b in comparisons:
        src = ours[a] if isinstance(a, str) else a
        if isinstance(src, str):
            table[col] = {n: src for n in names}
            continue
        table[col] = {n: rel_err(src[n], b[n], lengths) for n in names}

    fp32 = table["ours fp32 vs HF fp32"]
    fp32_ok = all(isinstance(v, float) and v <= FP32_TOL for v in fp32.values())
    result = {
        "what": "relative error ||a-b||/||b|| over real tokens of a right-padded batch, random weights",
        "device": str(jax.devices()[0]), "jax": jax.__version__, "torch": torch.__version__,
        "transformers": __import__("transformers").__version__, "python": platform.python_version(),
        "torch_device": device, "hf_attention": {"fp32": attn32, "bf16": attn16}, "auto_attn_impl_bf16": auto,
        "shape": {**shape, "layers": n_layers, "head_dim": cfg.head_dim}, "lengths": lengths,
        "layers_compared": layers, "errors": table, "timings": timings,
        "fp32_tolerance": FP32_TOL, "fp32_pass": fp32_ok,
    }
    md = to_markdown(result, names)
    print(md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "model_equivalence.md").write_text(md)
        (out / "model_equivalence.json").write_text(json.dumps(result, indent=2))
        print(f"wrote {out / 'model_equivalence.md'} and .json")
    if tmp is not None:
        tmp.cleanup()
    return 0 if fp32_ok else 1


def _matmul_precision(jax, precision):
    """``jax.default_matmul_precision(p)`` where this JAX has it, else the global config flag
    (restored afterwards)."""
    if precision is None:
        return nullcontext()
    ctx = getattr(jax, "default_matmul_precision", None)
    if ctx is not None:
        return ctx(precision)

    class _Flag:
        def __enter__(self):
            self.old = jax.config.jax_default_matmul_precision
            jax.config.update("jax_default_matmul_precision", precision)

        def __exit__(self, *exc):
            jax.config.update("jax_default_matmul_precision", self.old)

    return _Flag()


def to_markdown(r: dict, names: list[str]) -> str:
    cols = list(r["errors"])
    lines = [
        "## Model equivalence on " + r["device"],
        "",
        (f"jax {r['jax']}, torch {r['torch']}, transformers {r['transformers']}; transformers attention "
         f"{r['hf_attention']}; `attn_impl=\"auto\"` in bf16 resolves to `{r['auto_attn_impl_bf16']}` here."),
        f"Shape {r['shape']}; right-padded batch, lengths {r['lengths']}; RANDOM weights (bf16 checkpoint).",
        "Cells: ||a-b|| / ||b|| over the real tokens.",
        "",
        "| tensor | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for n in names:
        cells = []
        for c in cols:
            v = r["errors"][c][n]
            cells.append(f"{v:.2e}" if isinstance(v, float) else "n/a")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    unavailable = {c: next(iter(r["errors"][c].values())) for c in cols
                   if isinstance(next(iter(r["errors"][c].values())), str)}
    for c, why in unavailable.items():
        lines.append(f"\n{c}: {why}")
    lines += ["", "| path | ms / batch (captures only) | real tokens / s |", "|---|---|---|"]
    for label, t in r["timings"].items():
        if isinstance(t, dict):
            lines.append(f"| {label} | {t['ms_per_batch']:.1f} | {t['real_tokens_per_s']:.0f} |")
        else:
            lines.append(f"| {label} | n/a | n/a |")
    verdict = "PASS" if r["fp32_pass"] else "FAIL"
    lines += ["", f"fp32 equivalence (every tensor <= {r['fp32_tolerance']:g}): **{verdict}**", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
