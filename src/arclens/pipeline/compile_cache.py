"""JAX's persistent compilation cache for the jobs (extract, infer).

A resumed or preempted run compiles the same shapes again; with the cache on disk it loads them
instead. Default location: ``$XDG_CACHE_HOME/arclens/xla`` (``~/.cache/arclens/xla``);
``ARCLENS_COMPILE_CACHE=DIR`` moves it, ``ARCLENS_COMPILE_CACHE=off`` turns it off. A cache that
cannot be used is a warning, never a failed run, and a cache the caller configured for JAX
themselves (``JAX_COMPILATION_CACHE_DIR``) is left alone.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def enable_compile_cache() -> str | None:
    """Point JAX at the cache directory; returns it, or None when off or unusable."""
    import jax

    if jax.config.jax_compilation_cache_dir:  # the caller's own JAX setting wins
        return jax.config.jax_compilation_cache_dir
    from arclens.deployment import ENV_COMPILE_CACHE, compile_cache

    path = compile_cache()
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        log.warning("%s: cannot use %s as a compilation cache (%s); compiling from scratch", ENV_COMPILE_CACHE, path,
                    err.strerror)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    # Only programs that took a while to compile are worth a disk write (the capture functions do);
    # JAX's own variable, when set, wins.
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return path
