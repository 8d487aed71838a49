"""What an edit costs: the same jitted forward pass (logits included) with and without an edit at
one hook, measured side by side, beside the cost of the SAE alone.

Rows (arclens, JAX): the clean forward; the same with ``identity``, ``zero``, ``steer`` (filtered
to the test input's cells), ``splice(sae)`` and ``ablate(sae, 10 latents)`` (with the error term)
at one hook; then the SAE alone on the same ``[B, T, D]`` activations (``encode`` + ``decode``, as
the splice runs it) and its two matmuls alone (``x @ W_enc``, ``z @ W_dec``, dense). The question
each edit row answers is its "overhead" (its time minus the clean forward's) against the SAE
alone: a splice should cost no more than the SAE's own computation, i.e. the edit machinery itself
adds nothing measurable. With ``--torch`` the same model in transformers (eager, fp32 on CPU)
runs clean and with SAELens's reconstruction of the same SAE as a replacement forward hook: the
same question for the usual tool.

Timing: every variant is compiled (or warmed) first; then ``--rounds`` rounds each run every
variant once, in order, so a machine that slows down slows every variant alike; the median per
variant is reported. The model has random weights in memory (its cost does not depend on them);
``--preset 0.5b`` takes Qwen2.5-0.5B's shapes, and ``--layers`` keeps only the first N layers.

    python benchmarks/edit_cost.py                      # CPU default: a 512-wide, 8-layer model
    python benchmarks/edit_cost.py --preset 0.5b --batch 8 --seq 2048 --dtype bfloat16   # accelerator
    python benchmarks/edit_cost.py --tiny               # smoke test (tests/model/test_edits_benchmark.py)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default=None, help="Qwen2.5 shapes (0.5b, 1.5b, ...) instead of --d-model etc.")
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--ffn", type=int, default=1408)
    p.add_argument("--vocab", type=int, default=16384)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--expansion", type=int, default=8, help="SAE latents per model dimension")
    p.add_argument("--k", type=int, default=32, help="the SAE's TopK")
    p.add_argument("--hook", default=None, help="edited hook (default: resid_post of the middle layer)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--torch", action="store_true", help="also transformers, clean and with a SAELens replacement hook")
    p.add_argument("--tiny", action="store_true", help="smoke test: tiny shapes, 2 rounds")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    return p.parse_args(argv)


def model_config(args):
    from arclens.model.config import QwenConfig

    if args.preset:
        base = QwenConfig.preset(args.preset)
        n_layers = args.layers if args.layers != 8 else base.num_hidden_layers
    else:
        base = QwenConfig(vocab_size=args.vocab, hidden_size=args.d_model, intermediate_size=args.ffn,
                          num_hidden_layers=args.layers, num_attention_heads=args.heads,
                          num_key_value_heads=args.kv_heads, head_dim=args.d_model // args.heads, rope_theta=1e6,
                          rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=32768,
                          dtype=args.dtype)
        n_layers = args.layers
    import dataclasses

    return dataclasses.replace(base, num_hidden_layers=n_layers)


def random_params(config, dtype, seed=0):
    """Random weights in our layout (model/params.py), 1/sqrt(fan-in) scaled; norms 1."""
    import jax.numpy as jnp
    import numpy as np

    from arclens.model.params import Layer, Params, layer_table, top_table

    rng = np.random.default_rng(seed)

    def draw(name, spec):
        if len(spec.shape) == 1:
            return jnp.ones(spec.shape, dtype)
        fan_in = spec.shape[0] * (spec.shape[1] if name == "o" else 1)  # o: [Hq, hd, D]
        return jnp.asarray(rng.standard_normal(spec.shape, np.float32) / np.sqrt(fan_in), dtype)

    layers = [Layer(**{name: draw(name, spec) for name, spec in layer_table(config, i).items()})
              for i in range(config.num_hidden_layers)]
    top = {name: draw(name, spec) for name, spec in top_table(config).items()}
    top["embed"] = top["embed"] * np.sqrt(top["embed"].shape[0])  # unit-scale embeddings
    return Params(embed=top["embed"], layers=layers, final_norm=top["final_norm"], lm_head=top.get("lm_head"))


def random_sae(config, hook, expansion, k, seed=1):
    import numpy as np

    from arclens.sae import SAEConfig, new_sae

    rng = np.random.default_rng(seed)
    d, m = config.hidden_size, expansion * config.hidden_size
    w = rng.standard_normal((m, d), np.float32)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    cfg = SAEConfig("topk", d, m, d, k=k, hook_name=hook)
    return new_sae(cfg, w.T, np.zeros(m), w, np.zeros(d))


def timed(fn, rounds_out: list, block):
    t0 = time.perf_counter()
    block(fn())
    rounds_out.append(time.perf_counter() - t0)


def run_arclens(args, config, params, sae, hook):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from arclens.model import edits as E
    from arclens.model.edits import PromptRoles, batch_roles
    from arclens.model.qwen import forward
    from arclens.sae import decode, encode
    from arclens.sae.edits import ablate, splice

    b, t, d = args.batch, args.seq, config.hidden_size
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, config.vocab_size, (b, t)), jnp.int32)
    lengths = jnp.full((b,), t, jnp.int32)
    grid = np.where(np.arange(t) % 4 == 0, 4, -1)  # a quarter of the tokens: "test input cells"
    roles = batch_roles([PromptRoles(grid, np.zeros(t), np.zeros(t), 2, t)] * b, b, t)
    direction = jnp.asarray(rng.standard_normal(d), jnp.float32)

    @jax.jit
    def fwd(params, edits, roles):
        return forward(params, config, tokens, lengths, logits=True, edits=edits, roles=roles)["logits"]

    variants = {
        "forward (no edit)": {},
        "+ identity": {hook: E.identity()},
        "+ zero": {hook: E.zero()},
        "+ steer (test-input cells)": {hook: E.steer(direction, 4.0, where=E.cells("test_input"))},
        "+ splice(sae)": {hook: splice(sae)},
        "+ ablate(sae, 10 latents)": {hook: ablate(sae, range(10))},
    }
    calls = {name: (lambda e=e: fwd(params, e, roles)) for name, e in variants.items()}
    x = jnp.asarray(rng.standard_normal((b, t, d)), params.embed.dtype)
    sae_alone = jax.jit(lambda s, x: decode(s, encode(s, x)).astype(x.dtype))
    dense = jax.jit(lambda s, x: (x.astype(s.W_enc.dtype) @ s.W_enc) @ s.W_dec)
    calls["SAE alone (encode + decode)"] = lambda: sae_alone(sae, x)
    calls["SAE matmuls alone (dense)"] = lambda: dense(sae, x)
    block = jax.block_until_ready
    return measure(calls, args.rounds, block)


def run_torch(args, config, sae, hook):
    import tempfile

    import numpy as np
    import torch
    import transformers

    from arclens.sae import save

    cfg = transformers.Qwen2Config(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, tie_word_embeddings=True, rope_theta=config.rope_theta)
    model = transformers.Qwen2ForCausalLM(cfg).eval().to(torch.float32 if args.dtype == "float32" else torch.bfloat16)
    from sae_lens import SAE

    with tempfile.TemporaryDirectory() as d:
        save(sae, d)
        sl = SAE.load_from_disk(d)
    layer = int(hook.split(".")[1])
    kind = hook.split(".hook_")[1]
    module = {"resid_post": model.model.layers[layer], "mlp_out": model.model.layers[layer].mlp,
              "attn_out": model.model.layers[layer].self_attn}[kind]

    def replace(mod, args_, out):
        first = out[0] if isinstance(out, tuple) else out
        new = sl.decode(sl.encode(first.float())).to(first.dtype)
        return (new, *out[1:]) if isinstance(out, tuple) else new

    ids = torch.as_tensor(np.random.default_rng(0).integers(0, config.vocab_size, (args.batch, args.seq)))

    def clean():
        with torch.no_grad():
            return model(input_ids=ids, use_cache=False).logits

    def hooked():
        h = module.register_forward_hook(replace)
        try:
            with torch.no_grad():
                return model(input_ids=ids, use_cache=False).logits
        finally:
            h.remove()

    return measure({"transformers (no hook)": clean, "transformers + SAELens splice hook": hooked}, args.rounds,
                   lambda x: x)


def measure(calls: dict, rounds: int, block) -> dict[str, float]:
    for fn in calls.values():  # compile / warm up
        block(fn())
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            timed(fn, times[name], block)
    return {name: statistics.median(v) for name, v in times.items()}


def rows_for(times: dict, base: str, sae_name: str | None, tokens: int, side: str) -> list[dict]:
    rows = []
    for name, t in times.items():
        edit = name.startswith("+") or (name != base and name.startswith("transformers"))
        overhead = t - times[base] if edit else None
        rows.append({
            "side": side, "variant": name, "ms": 1e3 * t, "tokens_per_s": tokens / t,
            "overhead_ms": None if overhead is None else 1e3 * overhead,
            "overhead_vs_sae": None if overhead is None or sae_name is None else overhead / times[sae_name],
        })
    return rows


HEADERS = ["side", "variant", "ms / batch", "tokens/s", "overhead ms", "overhead / SAE alone"]


def print_table(rows: list[dict], title: str) -> None:
    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    cells = [[r["side"], r["variant"], f(r["ms"], ".2f"), f(r["tokens_per_s"], ",.0f"), f(r["overhead_ms"], "+.2f"),
              f(r["overhead_vs_sae"], ".2f")] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(HEADERS)]
    print(title)
    print("  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True)))
    for c in cells:
        print("  ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)))


def versions() -> dict:
    import jax
    import numpy

    out = {"jax": jax.__version__, "numpy": numpy.__version__, "device": str(jax.devices()[0].device_kind),
           "backend": jax.default_backend(), "python": sys.version.split()[0]}
    try:
        import torch
        import transformers

        out |= {"torch": torch.__version__, "transformers": transformers.__version__}
    except ImportError:
        pass
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.tiny:
        args.d_model, args.layers, args.heads, args.kv_heads, args.ffn, args.vocab = 64, 2, 4, 2, 128, 512
        args.batch, args.seq, args.rounds, args.expansion, args.k = 2, 64, 1, 4, 8
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax.numpy as jnp

    config = model_config(args)
    hook = args.hook or f"blocks.{config.num_hidden_layers // 2}.hook_resid_post"
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
    params = random_params(config, dtype)
    sae = random_sae(config, hook, args.expansion, args.k)
    tokens = args.batch * args.seq
    rows = rows_for(run_arclens(args, config, params, sae, hook), "forward (no edit)", "SAE alone (encode + decode)",
                    tokens, "arclens")
    if args.torch:
        rows += rows_for(run_torch(args, config, sae, hook), "transformers (no hook)", None, tokens, "torch")
    v = versions()
    title = (f"edit cost at {hook}: d_model {config.hidden_size}, {config.num_hidden_layers} layers, vocab "
             f"{config.vocab_size}, batch {args.batch} x {args.seq} tokens, {args.dtype}; SAE topk k={args.k}, "
             f"{args.expansion * config.hidden_size} latents; median of {args.rounds} rounds on {v['device']} "
             f"({v['backend']})")
    print_table(rows, title)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"rows": rows, "versions": v, "args": vars(args), "hook": hook}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
