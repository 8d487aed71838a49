"""Running `arclens` in subprocesses for the distributed tests, and reading stores back."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_small_tasks(path: Path, n_tasks: int, seed: int = 0) -> Path:
    """ARC tasks with 1x1..4x4 grids: prompts of a few hundred tokens, cheap on CPU."""
    rng = np.random.default_rng(seed)

    def grid():
        h, w = rng.integers(1, 5, size=2)
        return rng.integers(0, 10, size=(h, w)).tolist()

    tasks = {f"task{i:03d}": {"train": [{"input": grid(), "output": grid()} for _ in range(2)],
                              "test": [{"input": grid(), "output": grid()}]} for i in range(n_tasks)}
    path.write_text(json.dumps(tasks))
    return path


def cli_env(**extra) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DEFAULT_MATMUL_PRECISION="highest", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=str(REPO / "src"))
    env.pop("ARCLENS_TEST_CRASH_AT", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_cli(args: list[str], log: Path, **env) -> subprocess.Popen:
    """``arclens ARGS`` in a new process, output to ``log`` (a file: a full pipe would block it)."""
    f = open(log, "w")  # noqa: SIM115 - closed by the child's exit; the parent only reads the file
    return subprocess.Popen([sys.executable, "-m", "arclens.cli", *map(str, args)], stdout=f, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=cli_env(**env))


def wait_ok(procs: list[subprocess.Popen], logs: list[Path], timeout: float = 240) -> None:
    try:
        for p, log in zip(procs, logs):
            rc = p.wait(timeout)
            assert rc == 0, f"exit {rc}:\n{log.read_text()[-4000:]}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def stored(dest: str, storage_options=None) -> dict[str, dict[str, np.ndarray]]:
    """key -> arrays of every committed sample; a key stored twice fails."""
    import arclens

    out = {}
    for sample, arrays in arclens.open_store(str(dest), storage_options=storage_options).samples():
        assert sample["key"] not in out, f"{sample['key']} stored twice"
        out[sample["key"]] = {k: np.array(v) for k, v in arrays.items()}
    return out
