"""``--mesh DATA,MODEL``: the one device mesh every job runs on.

Axis names are fixed, ``("data", "model")``: batches shard over ``data``, parameters over ``model``
(see sharding.py). The default is all-data (``N,1``), which is right for every model that fits on
one device: no collectives at all in the forward pass.
"""

from __future__ import annotations

import re

import jax
from jax.sharding import AxisType, Mesh

from arclens.errors import UserError

AXES = ("data", "model")
_SPEC_RE = re.compile(r"^\s*(-1|\d+)\s*[,x]\s*(-1|\d+)\s*$")


def parse_mesh_spec(spec: str | None, n_devices: int) -> tuple[int, int]:
    """``"DATA,MODEL"`` -> ``(data, model)`` for ``n_devices``; one side may be -1 (the rest)."""
    if spec is None or spec.strip() == "":
        return n_devices, 1
    m = _SPEC_RE.match(spec)
    if not m:
        raise UserError(f"--mesh: {spec!r} is not DATA,MODEL (two positive integers, e.g. 4,2 or -1,2)")
    data, model = int(m.group(1)), int(m.group(2))
    if data == -1 and model == -1:
        raise UserError(f"--mesh: {spec!r}: at most one side may be -1")
    if data == 0 or model == 0:
        raise UserError(f"--mesh: {spec!r}: axis sizes must be positive")
    if data == -1 or model == -1:
        known = model if data == -1 else data
        if n_devices % known:
            raise UserError(f"--mesh: {spec!r}: {known} does not divide the {n_devices} devices")
        data, model = (n_devices // known, known) if data == -1 else (known, n_devices // known)
    if data * model != n_devices:
        raise UserError(
            f"--mesh: {spec!r} asks for {data}x{model}={data * model} devices, but JAX sees {n_devices} "
            f"({jax.default_backend()}); DATA*MODEL must equal the device count across all processes"
        )
    return data, model


def make_mesh(spec: str | None = None, devices=None) -> Mesh:
    """A ``("data", "model")`` mesh over all devices of all processes (or over ``devices``).

    Axis types are Auto on purpose: the model code carries no sharding annotations inside its ops,
    so XLA's propagation (GSPMD) places the collectives. jax.make_mesh would default to Explicit.
    ``jax.make_mesh`` also orders the devices: along the ICI torus on TPU, and by process on CPU
    and GPU, where the ``data`` axis then spans processes and ``model`` stays inside one host
    whenever MODEL divides the per-host device count (checked on CPU in tests/distributed).
    """
    devices = list(jax.devices() if devices is None else devices)
    data, model = parse_mesh_spec(spec, len(devices))
    return jax.make_mesh((data, model), AXES, axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def use_mesh(mesh: Mesh):
    """Context manager that makes ``mesh`` the ambient mesh (``with mesh:`` is deprecated)."""
    return jax.set_mesh(mesh)
