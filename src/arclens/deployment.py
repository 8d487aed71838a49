"""Deployment plumbing from the environment: one parser, checked before anything is written.

Settings that shape a run are flags (``arclens extract --help``). Environment variables are left
only for what a deployment sets around arclens: a process's place in a multi-host job, storage
options, the spool and compile-cache folders. ``read_deployment`` parses and checks all of them at
once; a bad value is a UserError (one line, exit 2) before the command writes anything. Library
code reads its own variable through the same functions here (``storage_options``,
``spool_dir``, ``compile_cache``), so there is one spelling and one check of each.

| variable | meaning |
| --- | --- |
| ``ARCLENS_COORDINATOR`` / ``JAX_COORDINATOR_ADDRESS`` | HOST:PORT of process 0 (with the next two) |
| ``ARCLENS_NUM_PROCESSES`` / ``JAX_NUM_PROCESSES`` | processes in the SPMD job |
| ``ARCLENS_PROCESS_ID`` / ``JAX_PROCESS_ID`` | this process's index |
| ``ARCLENS_NO_DISTRIBUTED`` | 1: never start jax.distributed on a Cloud TPU VM by itself |
| ``ARCLENS_INIT_TIMEOUT_S`` | seconds jax.distributed waits for every process (default 300) |
| ``ARCLENS_STORAGE_OPTIONS`` | a JSON object of fsspec storage options for every URL |
| ``ARCLENS_SPOOL_DIR`` | local folder where shards for a remote store are spooled |
| ``ARCLENS_COMPILE_CACHE`` | JAX's persistent compilation cache: a folder, or ``off`` |
| ``TPU_WORKER_ID`` | set by Cloud TPU VMs: the default ``--worker-id`` of a worker fleet |
| ``ARCLENS_TEST_CRASH_AT`` | tests only: crashpoints.py |

The knobs that used to shape a run from the environment are refused with the flag that replaced
them, so an old deployment script fails loudly instead of being silently ignored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from arclens.errors import UserError

ENV_COORDINATOR = ("ARCLENS_COORDINATOR", "JAX_COORDINATOR_ADDRESS")
ENV_NUM_PROCESSES = ("ARCLENS_NUM_PROCESSES", "JAX_NUM_PROCESSES")
ENV_PROCESS_ID = ("ARCLENS_PROCESS_ID", "JAX_PROCESS_ID")
ENV_NO_DISTRIBUTED = "ARCLENS_NO_DISTRIBUTED"
ENV_INIT_TIMEOUT = "ARCLENS_INIT_TIMEOUT_S"
ENV_STORAGE_OPTIONS = "ARCLENS_STORAGE_OPTIONS"
ENV_SPOOL_DIR = "ARCLENS_SPOOL_DIR"
ENV_COMPILE_CACHE = "ARCLENS_COMPILE_CACHE"
ENV_TPU_WORKER_ID = "TPU_WORKER_ID"
DEFAULT_INIT_TIMEOUT_S = 300
_OFF = ("off", "0", "none", "false")

# Environment knobs of earlier versions -> the flag that replaced each.
REPLACED_BY_FLAGS = {
    "ARCLENS_MAX_SHAPES": "--max-shapes",
    "ARCLENS_CAPTURE_MEMORY": "--capture-memory",
    "ARCLENS_PUBLISH_THREADS": "--publish-threads",
    "ARCLENS_RENDER_WORKERS": "--render-workers",
    "ARCLENS_TASKS_PER_UNIT": "--tasks-per-unit",
    "ARCLENS_CLAIM_TTL_S": "--claim-ttl",
    "ARCLENS_WORKER_IDLE_EXIT_S": "--idle-exit",
    "ARCLENS_NUM_WORKERS": "--num-workers",
}


@dataclass(frozen=True)
class Deployment:
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    no_distributed: bool = False
    init_timeout_s: int = DEFAULT_INIT_TIMEOUT_S
    storage_options: dict = field(default_factory=dict)
    spool_dir: str | None = None
    compile_cache: str | None = None  # a folder, or None: off
    tpu_worker_id: int | None = None


def read_deployment(environ: Mapping[str, str] | None = None) -> Deployment:
    """Every deployment variable, parsed and checked (UserError naming the variable)."""
    env = os.environ if environ is None else environ
    for name, flag in REPLACED_BY_FLAGS.items():
        if env.get(name, "") != "":
            raise UserError(f"{name} is no longer read: settings that shape a run are flags now; use {flag} "
                            f"(and unset {name})")
    _check_crash_spec(env)
    return Deployment(
        coordinator=_first(env, ENV_COORDINATOR),
        num_processes=_int(env, ENV_NUM_PROCESSES, minimum=1),
        process_id=_int(env, ENV_PROCESS_ID, minimum=0),
        no_distributed=env.get(ENV_NO_DISTRIBUTED, "") not in ("", "0"),
        init_timeout_s=_int(env, (ENV_INIT_TIMEOUT,), minimum=1) or DEFAULT_INIT_TIMEOUT_S,
        storage_options=_storage_options(env),
        spool_dir=env.get(ENV_SPOOL_DIR) or None,
        compile_cache=_compile_cache(env),
        tpu_worker_id=_int(env, (ENV_TPU_WORKER_ID,), minimum=0),
    )


def storage_options() -> dict:
    """``ARCLENS_STORAGE_OPTIONS``, parsed (store/fs.py reads it for every URL)."""
    return _storage_options(os.environ)


def spool_dir() -> str | None:
    return os.environ.get(ENV_SPOOL_DIR) or None


def compile_cache() -> str | None:
    """The compilation cache folder, or None when ``ARCLENS_COMPILE_CACHE`` says off."""
    return _compile_cache(os.environ)


def _first(env, names: tuple[str, ...]) -> str | None:
    for name in names:
        if env.get(name, "") != "":
            return env[name]
    return None


def _int(env, names: tuple[str, ...], *, minimum: int) -> int | None:
    for name in names:
        raw = env.get(name, "")
        if raw == "":
            continue
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise UserError(f"{name}={raw!r}: expected an integer of at least {minimum}")
        return value
    return None


def _storage_options(env) -> dict:
    raw = env.get(ENV_STORAGE_OPTIONS, "")
    if not raw:
        return {}
    try:
        opts = json.loads(raw)
    except json.JSONDecodeError as err:
        raise UserError(f"{ENV_STORAGE_OPTIONS}: not a JSON object ({err})") from None
    if not isinstance(opts, dict):
        raise UserError(f"{ENV_STORAGE_OPTIONS}: expected a JSON object, got {type(opts).__name__}")
    return opts


def _compile_cache(env) -> str | None:
    raw = env.get(ENV_COMPILE_CACHE, "").strip()
    if raw.lower() in _OFF:
        return None
    if raw:
        return os.path.expanduser(raw)
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "arclens", "xla")


def _check_crash_spec(env) -> None:
    from arclens.crashpoints import ENV, parse

    spec = env.get(ENV, "")
    if spec:
        try:
            parse(spec)
        except ValueError as err:
            raise UserError(f"{ENV}: {err}") from None
