#!/usr/bin/env python3
"""SAE training: arclens against SAELens's SAETrainer, same batches, in one process.

    PYTHONPATH=src:. python3 benchmarks/sae_throughput.py                 # the issue's two stores
    PYTHONPATH=src:. python3 benchmarks/sae_throughput.py --smoke         # seconds: the table's shape

Workload (issue 13): activation stores with a planted dictionary (tests/support/planted.py),
written to a temporary folder (or ``--store-dir``, reused when it holds them):

- ``uniform``: 512 atoms in d=128, uniform frequencies, d_sae 1024;
- ``zipf``: 2048 atoms in d=128, Zipf(0.9) frequencies, d_sae 2048 (the issue's bar);
- ``zipf-centred`` (``--stores zipf-centred``): the same without the common offset of norm 2;

about 8 atoms a token, TopK k=8, batches of 4096 tokens, ``--tokens`` (1.2M) training tokens.

- **arclens** trains through ``arclens.sae.trainer.train`` with the store source, at its
  defaults (no learning rate given), exactly as ``arclens train-sae`` does.
- **SAELens** (``SAETrainer`` + ``TopKTrainingSAE``, its defaults otherwise, as the issue ran it)
  is fed the *same batches in the same order*, read beforehand from the same store source into
  memory (so its time excludes reading, arclens's includes it), once per learning rate of the
  sweep (``--lrs``; constant schedule, ``lr_end = lr``).

Both SAEs are then measured on held-out tokens of the same dictionary: FVU, L0, dead fraction
(latents that never fire on them) and atoms recovered (an atom whose best decoder row has cosine
> 0.9). tokens/s is training tokens over the training wall time (arclens: steady state, compiles
excluded, data reading included; SAELens: ``fit()``'s wall time). torch runs with
``--threads`` (2) threads; JAX uses the machine's CPUs.

Prints one table per store and writes JSON (``--json``, or ``$OUT/sae_throughput.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

STORES = {
    "uniform": {"n_atoms": 512, "d": 128, "zipf": None, "d_sae": 1024},
    "zipf": {"n_atoms": 2048, "d": 128, "zipf": 0.9, "d_sae": 2048},
    # the same without the tokens' common offset (real activations have one; SAELens does not centre)
    "zipf-centred": {"n_atoms": 2048, "d": 128, "zipf": 0.9, "d_sae": 2048, "offset": 0.0},
}
SMOKE = {"n_atoms": 64, "d": 32, "zipf": 0.9, "d_sae": 128}
HOOK = "blocks.0.hook_resid_post"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stores", nargs="+", choices=sorted(STORES), default=["uniform", "zipf"])
    ap.add_argument("--tokens", type=int, default=1_200_000)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--lrs", type=float, nargs="+", default=[4e-4, 1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2],
                    help="SAELens learning-rate sweep")
    ap.add_argument("--eval-tokens", type=int, default=65536)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for SAELens")
    ap.add_argument("--store-dir", default=None, help="keep/reuse the planted stores here")
    ap.add_argument("--json", default=None)
    ap.add_argument("--smoke", action="store_true", help="a tiny store, few tokens, two learning rates")
    args = ap.parse_args(argv)
    if args.smoke:
        args.stores, args.tokens, args.batch, args.k = ["smoke"], 8192, 1024, 4
        args.lrs, args.eval_tokens = args.lrs[3:5], 4096
    return args


def planted_store(name: str, spec: dict, folder: Path, n_tokens: int):
    import numpy as np
    from tests.support.planted import make_dictionary, write_planted_store

    dic = make_dictionary(spec["n_atoms"], spec["d"], seed=0, zipf=spec["zipf"], offset_norm=spec.get("offset", 2.0))
    path = folder / f"{name}-{spec['n_atoms']}x{spec['d']}-{n_tokens}"
    if not (path / "metadata.json").exists():
        write_planted_store(path, dic, n_tokens, shard_bytes=32 << 20)
    rng = np.random.default_rng(12345)

    return str(path), dic, rng


def held_out(dic, n: int):
    import numpy as np
    from tests.support.planted import sample_tokens

    x, _ = sample_tokens(dic, n, np.random.default_rng(987654))
    return x


def measure(encode, decode, W_dec, x, atoms) -> dict:
    """FVU, L0, dead fraction and atoms recovered of an SAE on held-out tokens ``x``."""
    import numpy as np
    from tests.support.planted import recovered

    z = np.asarray(encode(x))
    xh = np.asarray(decode(z))
    fvu = float(((x - xh) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    return {"fvu": fvu, "l0": float((z > 0).sum(1).mean()), "dead": float(((z > 0).sum(0) == 0).mean()),
            "recovered": recovered(atoms, np.asarray(W_dec))}


def run_arclens(store_path: str, spec: dict, args, out: Path) -> dict:
    import arclens
    import arclens.sae as asae
    from arclens.sae import recipe as R
    from arclens.sae.store_source import StoreSource, store_fingerprint
    from arclens.sae.trainer import RunOptions, train

    store = arclens.open_store(store_path)
    sae_spec = R.SAESpec(name="topk", hook_in=HOOK, hook_out=None, arch="topk", d_in=spec["d"], d_out=spec["d"],
                         d_sae=spec["d_sae"], k=args.k)
    settings = R.TrainSettings(saes=(sae_spec,), tokens=args.tokens, batch_tokens=args.batch,
                               source=store_fingerprint(store))
    source = StoreSource(store, [HOOK], batch_tokens=args.batch, seed=0)
    result = train(settings, source, RunOptions(out=str(out), progress=False, metrics_every=5))
    sae = asae.load(f"{out}/topk")
    return {"sae": sae, "tokens_per_s": result.tokens_per_s, "wall_s": result.wall_s,
            "lr": settings.lr_for(sae_spec)}


def saelens_batches(store_path: str, args):
    """The batches arclens trains on, in its order, as torch tensors (read once, up front)."""
    import numpy as np
    import torch

    import arclens
    from arclens.sae.store_source import StoreSource

    source = StoreSource(arclens.open_store(store_path), [HOOK], batch_tokens=args.batch, seed=0)
    out = []
    for hb in source.host_batches():
        out.append(torch.from_numpy(np.ascontiguousarray(hb.arrays[HOOK], np.float32)))
        if len(out) * args.batch >= args.tokens:
            break
    return out


def run_saelens(batches, spec: dict, lr: float, args) -> dict:
    import torch
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    torch.manual_seed(0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=spec["d"], d_sae=spec["d_sae"], k=args.k, dtype="float32",
                                                device="cpu"))
    cfg = SAETrainerConfig(total_training_samples=len(batches) * args.batch, train_batch_size_samples=args.batch,
                           lr=lr, lr_end=lr, device="cpu")
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=iter(batches))
    t = time.perf_counter()
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
        trainer.fit()
    wall = time.perf_counter() - t
    return {"sae": sae, "tokens_per_s": len(batches) * args.batch / wall, "wall_s": wall, "lr": lr}


def interleaved_speed(batches, spec: dict, lr: float, args, rounds: int = 5, steps: int = 10) -> dict:
    """tokens/s of each trainer's step alone, in alternating rounds of ``steps`` steps on the same
    batches (already in memory), so both see the same machine load: the median round of each.
    A shared machine's load moves both numbers; alternating keeps their ratio honest."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    from arclens.sae import recipe as R
    from arclens.sae.train_state import init_state, make_step, step_configs

    sae_spec = R.SAESpec(name="topk", hook_in=HOOK, hook_out=None, arch="topk", d_in=spec["d"], d_out=spec["d"],
                         d_sae=spec["d_sae"], k=args.k)
    settings = R.TrainSettings(saes=(sae_spec,), tokens=len(batches) * args.batch, batch_tokens=args.batch)
    configs = step_configs(settings)
    n = len(batches)
    dev = [jnp.asarray(b.numpy()) for b in batches[: (rounds + 1) * steps]]
    states = (init_state(configs[0], sae_spec, settings, jnp.concatenate(dev[: min(4, len(dev))]), None),)
    step = make_step(configs)
    torch.manual_seed(0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=spec["d"], d_sae=spec["d_sae"], k=args.k, dtype="float32",
                                                device="cpu"))
    trainer = SAETrainer(cfg=SAETrainerConfig(total_training_samples=len(batches) * args.batch,
                                              train_batch_size_samples=args.batch, lr=lr, lr_end=lr, device="cpu"),
                         sae=sae, data_provider=iter(()))
    ours, theirs = [], []
    i = 0
    for r in range(rounds + 1):  # round 0 compiles and warms up, untimed
        t = time.perf_counter()
        for j in range(steps):
            states, _ = step(states, {HOOK: dev[(i + j) % len(dev)]}, jnp.int32(i + j))
        jax.block_until_ready(states)
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        for j in range(steps):
            trainer.step(batches[(i + j) % n])
            trainer.n_training_steps += 1
        t_theirs = time.perf_counter() - t
        if r:
            ours.append(steps * args.batch / t_ours)
            theirs.append(steps * args.batch / t_theirs)
        i += steps
    return {"arclens": float(np.median(ours)), "saelens": float(np.median(theirs))}


def table(rows: list[dict], title: str) -> str:
    cols = ["trainer", "lr", "tokens/s", "FVU", "L0", "dead", "recovered", "vs best SAELens"]
    lines = [title, " | ".join(cols), " | ".join("---" for _ in cols)]
    for r in rows:
        lines.append(" | ".join([
            r["trainer"], f"{r['lr']:.2g}" + (" (default)" if r["trainer"] == "arclens" else ""),
            f"{r['tokens_per_s']:,.0f}" if r.get("tokens_per_s") else "?", f"{r['fvu']:.3f}", f"{r['l0']:.2f}",
            f"{r['dead']:.1%}", f"{r['recovered']:.1%}", r.get("ratio", ""),
        ]))
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax
    import numpy as np
    import sae_lens
    import torch

    torch.set_num_threads(args.threads)
    report = {"device": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "versions": {"jax": jax.__version__, "torch": torch.__version__, "sae_lens": sae_lens.__version__,
                           "numpy": np.__version__, "python": platform.python_version()},
              "args": {k: v for k, v in vars(args).items()}, "stores": {}}
    tmp = tempfile.TemporaryDirectory()
    folder = Path(args.store_dir or tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    for name in args.stores:
        spec = SMOKE if name == "smoke" else STORES[name]
        store_path, dic, _ = planted_store(name, spec, folder, args.tokens)
        x_eval = held_out(dic, args.eval_tokens)
        rows = []
        ours = run_arclens(store_path, spec, args, Path(tmp.name) / f"arclens-{name}")
        rows.append({"trainer": "arclens", "lr": ours["lr"], "tokens_per_s": ours["tokens_per_s"],
                     **measure(ours["sae"].encode, ours["sae"].decode, ours["sae"].W_dec, x_eval, dic.atoms)})
        batches = saelens_batches(store_path, args)
        print(f"{name}: arclens done ({rows[0]['tokens_per_s'] or 0:,.0f} tokens/s, FVU {rows[0]['fvu']:.3f}); "
              f"SAELens sweep over {len(args.lrs)} learning rates", file=sys.stderr, flush=True)
        for lr in args.lrs:
            theirs = run_saelens(batches, spec, lr, args)
            sae = theirs["sae"]

            def enc(x, sae=sae):
                with torch.no_grad():
                    return sae.encode(torch.from_numpy(np.asarray(x, np.float32))).numpy()

            def dec(z, sae=sae):
                with torch.no_grad():
                    return sae.decode(torch.from_numpy(np.asarray(z, np.float32))).numpy()

            rows.append({"trainer": "SAELens", "lr": lr, "tokens_per_s": theirs["tokens_per_s"],
                         **measure(enc, dec, sae.W_dec.detach().numpy(), x_eval, dic.atoms)})
        best = min((r for r in rows if r["trainer"] == "SAELens"), key=lambda r: r["fvu"])
        best["ratio"] = "best by FVU"
        speed = ours_speed = rows[0]["tokens_per_s"] or 0.0
        rows[0]["ratio"] = (f"{ours_speed / best['tokens_per_s']:.2f}x tokens/s; FVU {rows[0]['fvu'] - best['fvu']:+.3f}, "
                            f"dead {rows[0]['dead'] - best['dead']:+.1%}, recovered {rows[0]['recovered'] - best['recovered']:+.1%}")
        del speed
        inter = interleaved_speed(batches, spec, best["lr"], args)
        report_inter = (f"interleaved steps, same batches in memory: arclens {inter['arclens']:,.0f} tokens/s, SAELens "
                        f"(lr {best['lr']:.2g}) {inter['saelens']:,.0f} tokens/s, ratio {inter['arclens'] / inter['saelens']:.2f}x")
        title = (f"\n{name}: {spec['n_atoms']} atoms in d={spec['d']}, "
                 f"{'Zipf(' + str(spec['zipf']) + ')' if spec['zipf'] else 'uniform'} frequencies, d_sae {spec['d_sae']}, "
                 f"k {args.k}, batch {args.batch}, {args.tokens:,} tokens")
        print(table(rows, title), flush=True)
        print(report_inter, flush=True)
        report["stores"][name] = {"spec": spec, "rows": rows, "interleaved_tokens_per_s": inter}
    path = args.json or (os.path.join(os.environ["OUT"], "sae_throughput.json") if os.environ.get("OUT") else None)
    if path:
        Path(path).write_text(json.dumps(report, indent=2, default=str))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
