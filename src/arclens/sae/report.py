"""What a finished (or checkpointed) run leaves in each SAE's folder, besides the SAELens files:
``metrics.jsonl``, ``training.png``, ``sparsity.safetensors`` and ``arclens.json`` (SPEC.md 5).
Each is written whole (fs.write_whole), so a reader never sees half a file."""

from __future__ import annotations

import io
import json
import time

import numpy as np

from arclens.store import fs as fsx

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "training.png"
SPARSITY_FILE = "sparsity.safetensors"
ARCLENS_FILE = "arclens.json"
FORMAT = "arclens-sae"

# The curves of training.png: metric key -> axis title.
CURVES = {"loss": "loss", "fvu": "FVU", "l0": "L0", "dead": "dead fraction", "aux_loss": "aux loss",
          "lr": "learning rate"}


def write_metrics(fs, folder: str, lines: list[dict]) -> None:
    blob = "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines).encode()
    fsx.write_whole(fs, fsx.join(folder, METRICS_FILE), blob)


def plot_png(lines: list[dict], title: str) -> bytes:
    """The curves of ``lines`` against tokens, one panel each (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 6.5), dpi=100)
    tokens = np.array([line["tokens"] for line in lines], float)
    for i, (key, name) in enumerate(CURVES.items()):
        ax = fig.add_subplot(2, 3, i + 1)
        values = np.array([line.get(key, np.nan) for line in lines], float)
        ax.plot(tokens, values, lw=1.2)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("tokens", fontsize=8)
        ax.tick_params(labelsize=8)
        if key in ("loss", "aux_loss") and np.nanmin(values, initial=np.inf) > 0:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    # Fixed margins: tight_layout measures every tick label and costs seconds.
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.08, top=0.9, wspace=0.25, hspace=0.45)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_plot(fs, folder: str, lines: list[dict], title: str) -> None:
    if lines:
        fsx.write_whole(fs, fsx.join(folder, PLOT_FILE), plot_png(lines, title))


def write_sparsity(fs, folder: str, frequency: np.ndarray) -> None:
    """``sparsity [d_sae]``: log10 firing frequency (SAELens's file and its 1e-10 floor)."""
    from safetensors.numpy import save as st_save

    log_freq = np.log10(np.asarray(frequency, np.float64) + 1e-10).astype(np.float32)
    fsx.write_whole(fs, fsx.join(folder, SPARSITY_FILE), st_save({"sparsity": log_freq}))


def final_metrics(lines: list[dict], last: int = 10) -> dict:
    """The run's final FVU, L0, ... : the mean of its last ``last`` metric lines. In the first
    epoch each batch is new data when it is measured (before its update), so this is a
    held-out estimate."""
    tail = lines[-last:]
    out = {}
    for key in ("fvu", "l0", "dead", "dense", "aux_loss", "loss"):
        vals = [line[key] for line in tail if key in line]
        if vals:
            out[key] = float(np.mean(vals))
    return out


def write_arclens_json(fs, folder: str, doc: dict) -> None:
    doc = {"format": FORMAT, "version": 1, "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **doc}
    fsx.write_whole(fs, fsx.join(folder, ARCLENS_FILE), json.dumps(doc, indent=2, sort_keys=True).encode())


def read_arclens_json(fs, folder: str) -> dict | None:
    try:
        return json.loads(fsx.read_bytes(fs, fsx.join(folder, ARCLENS_FILE)))
    except FileNotFoundError:
        return None
    except ValueError:
        return {}
