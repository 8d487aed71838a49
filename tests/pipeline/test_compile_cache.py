"""A resumed run loads its compiled shapes from ARCLENS_COMPILE_CACHE instead of compiling them."""

from __future__ import annotations

import subprocess
import sys

from tests.support.cli import cli_env

# One process of a job: turn the cache on as the jobs do, compile the capture function for one
# shape, and report how many executables JAX took from the persistent cache.
_ONE_RUN = """
import sys
import jax, jax.numpy as jnp
from jax import monitoring
hits = []
monitoring.register_event_listener(lambda event, **kw: hits.append(event) if event.endswith("/cache_hits") else None)
from arclens.pipeline.compile_cache import enable_compile_cache
from arclens.model.config import QwenConfig
from arclens.model.loading import load_params
from arclens.model.hooks import parse_hooks
from arclens.pipeline.device import CaptureRunner
from arclens.distributed.mesh import make_mesh
assert enable_compile_cache() == sys.argv[2]
config = QwenConfig.from_pretrained(sys.argv[1])
params = load_params(sys.argv[1], config, dtype=jnp.float32)
runner = CaptureRunner(params, config, parse_hooks(["blocks.3.hook_resid_post"], 4), "all", "float32", make_mesh(None))
runner.compile_now([(2, 256)])
print("hits", len(hits))
"""


def _hits(model, cache, env) -> int:
    proc = subprocess.run([sys.executable, "-c", _ONE_RUN, str(model), str(cache)], env=env, capture_output=True,
                          text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split("hits")[-1])


def test_a_second_process_loads_the_compiled_shape_from_the_cache(tmp_path, tiny_model_dir):
    cache = tmp_path / "xla-cache"
    env = cli_env(ARCLENS_COMPILE_CACHE=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    assert _hits(tiny_model_dir, cache, env) == 0  # compiled, then written
    assert any(cache.iterdir())
    assert _hits(tiny_model_dir, cache, env) >= 1  # read back: a resume skips the compile


def test_the_cache_location_and_off(tmp_path, monkeypatch):
    from arclens.deployment import compile_cache

    monkeypatch.setenv("ARCLENS_COMPILE_CACHE", "off")
    assert compile_cache() is None
    monkeypatch.setenv("ARCLENS_COMPILE_CACHE", str(tmp_path / "c"))
    assert compile_cache() == str(tmp_path / "c")
    monkeypatch.delenv("ARCLENS_COMPILE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache() == str(tmp_path / "xdg" / "arclens" / "xla")
