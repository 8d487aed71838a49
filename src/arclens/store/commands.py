"""`arclens inspect`, `arclens verify` and `arclens export-pickle` (SPEC.md section 2).

verify exit status: 0 when every committed shard checks out (keys committed twice and uncommitted
leftovers are listed, but readers see neither), 1 when problems were found (each printed, then a summary), 2 when DEST is not a store or
cannot be read (a UserError, like every input error).
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

from arclens.errors import UserError


def _console() -> Console:
    # Piped output (logs, tests) gets a wide fixed width so that tables never truncate hook names.
    return Console(soft_wrap=True, highlight=False, width=None if sys.stdout.isatty() else 160)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# ---------------------------------------------------------------------------------------------
# inspect


def inspect(args) -> int:
    from arclens.store.reader import open_store
    from arclens.store.stats import hook_stats

    store = open_store(args.dest)
    con = _console()
    meta = store.metadata

    t = Table(title=f"activation store {args.dest}", show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value")
    model = meta.get("model", {})
    rows = [
        ("format", f"{meta['format']} v{meta['version']}"),
        ("model", str(model.get("name", model) if isinstance(model, dict) else model)
         + (" [bold red](RANDOM WEIGHTS: arclens random-model)[/]"
            if isinstance(model, dict) and model.get("random_weights") else "")
         + (" [bold yellow](TOY MODEL: arclens toy-model)[/]"
            if isinstance(model, dict) and model.get("toy_weights") else "")),
        ("hooks", ", ".join(store.hooks)),
        ("dtype / d_model", f"{meta['dtype']} / {store.d_model}"),
        ("positions", str(meta.get("positions"))),
        ("prompt", _compact(meta.get("prompt"))),
        ("tasks", _compact(meta.get("tasks"))),
        ("created", f"{meta.get('created_at')} by arclens {meta.get('arclens_version')}"),
        ("shards", f"{len(store.shards)} committed, {_fmt_bytes(sum(v.entry.bytes for v in store.shards))}"),
        ("samples", f"{store.n_samples}"),
        ("tokens", f"{store.n_tokens} per hook"),
    ]
    if store.committed.duplicates:
        rows.append(("duplicates", f"{len(store.committed.duplicates)} keys committed twice (run verify)"))
    for k, v in rows:
        t.add_row(k, v)
    con.print(t)

    stats = [hook_stats(store, h) for h in store.hooks]
    t = Table(title="activations (over the tokens seen)")
    for col in ("hook", "tokens", "seen", "|x| mean", "|x| std", "p1", "p50", "p99", "max", "x mean", "x std", "non-finite"):
        t.add_column(col, justify="left" if col == "hook" else "right")
    for s in stats:
        p = s.norm_percentiles
        t.add_row(s.hook, str(store.n_tokens), str(s.tokens_seen), f"{s.norm_mean:.4g}", f"{s.norm_std:.4g}",
                  f"{p[1]:.4g}", f"{p[50]:.4g}", f"{p[99]:.4g}", f"{s.norm_max:.4g}",
                  f"{s.value_mean:.3g}", f"{s.value_std:.4g}", str(s.nonfinite))
    con.print(t)

    for s in stats:
        counts, edges = s.histogram
        if not len(counts):
            continue
        t = Table(title=f"norm histogram: {s.hook}", show_header=True)
        t.add_column("|x| from", justify="right")
        t.add_column("to", justify="right")
        t.add_column("tokens", justify="right")
        t.add_column("")
        peak = max(1, int(counts.max()))
        for c, lo, hi in zip(counts, edges[:-1], edges[1:]):
            t.add_row(f"{lo:.4g}", f"{hi:.4g}", str(int(c)), "#" * round(40 * int(c) / peak))
        con.print(t)
    return 0


def _compact(d) -> str:
    if not isinstance(d, dict):
        return str(d)
    return ", ".join(f"{k}={v}" for k, v in d.items())


# ---------------------------------------------------------------------------------------------
# verify


def verify(args) -> int:
    from arclens.store.verify import verify_store

    report = verify_store(args.dest)
    con = _console()
    for problem in report.problems:
        con.print(f"PROBLEM {problem}")
    for key, first, other in report.duplicates[:20]:
        con.print(f"duplicate: sample {key} is committed twice: index/{first} (read) and index/{other} (ignored)")
    if len(report.duplicates) > 20:
        con.print(f"duplicate: ... {len(report.duplicates) - 20} more")
    if report.uncommitted:
        con.print(f"note: {len(report.uncommitted)} uncommitted shard file(s) from interrupted runs, "
                  f"invisible to readers: {', '.join(report.uncommitted[:5])}"
                  + (" ..." if len(report.uncommitted) > 5 else ""))
    summary = (f"{report.index_files} index files, {report.samples} samples, {report.tokens} tokens, "
               f"{_fmt_bytes(report.bytes)}")
    dup = (f"; {len(report.duplicates)} duplicate keys (readers use the first copy; the others only "
           "take space)") if report.duplicates else ""
    if report.ok:
        con.print(f"OK {args.dest}: {summary}; every shard matches its checksum and index{dup}")
        return 0
    con.print(f"FAILED {args.dest}: {len(report.problems)} problem(s); {summary}{dup}")
    return 1


# ---------------------------------------------------------------------------------------------
# export-pickle


def export_pickle(args) -> int:
    from arclens.store.pickle_export import export

    print("arclens: warning: pickle files run arbitrary code when loaded; only load this export "
          "from places you trust", file=sys.stderr)
    n = export(args.dest, args.out)
    print(f"exported {n} shard(s) to {args.out}")
    return 0


__all__ = ["UserError", "export_pickle", "inspect", "verify"]
