"""Running ``arclens`` in a fresh process, as a user does (needed to kill or signal it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.servers import free_port

REPO = Path(__file__).resolve().parents[2]

__all__ = ["REPO", "cli_env", "extract_args", "free_port", "run_cli", "start_cli", "wait_ok"]


def cli_env(**extra) -> dict:
    """The test process's environment for a child ``arclens``: CPU, exact fp32 matmuls, this
    checkout's sources, no crash point inherited from the parent; ``extra`` on top."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DEFAULT_MATMUL_PRECISION="highest",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO / "src"))
    env.pop("ARCLENS_TEST_CRASH_AT", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def extract_args(model, tasks, out, *extra) -> list[str]:
    return ["extract", "--model", str(model), "--tasks", str(tasks), "--out", str(out), *map(str, extra)]


def run_cli(args: list[str], timeout: float = 300, **env) -> subprocess.CompletedProcess:
    """``arclens ARGS`` to completion; stdout and stderr captured as text."""
    return subprocess.run([sys.executable, "-m", "arclens.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=cli_env(**env), check=False)


def start_cli(args: list[str], log: Path, **env) -> subprocess.Popen:
    """``arclens ARGS`` in the background, output to ``log`` (a file: a full pipe would block it)."""
    f = open(log, "w")  # noqa: SIM115 - closed by the child's exit; the parent only reads the file
    return subprocess.Popen([sys.executable, "-m", "arclens.cli", *map(str, args)], stdout=f, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=cli_env(**env))


def wait_ok(procs: list[subprocess.Popen], logs: list[Path], timeout: float = 240) -> None:
    """Every process exits 0 within ``timeout`` (else the assertion shows its log); none is left."""
    try:
        for p, log in zip(procs, logs):
            try:
                rc = p.wait(timeout)
            except subprocess.TimeoutExpired:
                tails = "\n".join(f"--- {q.name}:\n{q.read_text()[-3000:]}" for q in logs)
                raise AssertionError(f"still running after {timeout:.0f}s:\n{tails}") from None
            assert rc == 0, f"exit {rc}:\n{log.read_text()[-4000:]}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
