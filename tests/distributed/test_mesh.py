"""--mesh parsing and the Runtime's start-up rules (no coordinator is started here)."""

from __future__ import annotations

import os

import pytest

from arclens.distributed.mesh import parse_mesh_spec
from arclens.distributed.runtime import ProcessSettings, Runtime, initialize
from arclens.errors import UserError


@pytest.mark.parametrize(
    "spec, n, expected",
    [(None, 8, (8, 1)), ("", 4, (4, 1)), ("2,4", 8, (2, 4)), ("8,1", 8, (8, 1)), ("-1,2", 8, (4, 2)),
     ("4,-1", 8, (4, 2)), (" 1 , 2 ", 2, (1, 2)), ("2x2", 4, (2, 2))],
)
def test_mesh_spec(spec, n, expected):
    assert parse_mesh_spec(spec, n) == expected


@pytest.mark.parametrize(
    "spec, n, message",
    [("3,3", 8, "asks for 3x3=9 devices, but JAX sees 8"), ("a,b", 8, "is not DATA,MODEL"),
     ("2", 2, "is not DATA,MODEL"), ("0,8", 8, "must be positive"), ("-1,-1", 8, "at most one side"),
     ("-1,3", 8, "3 does not divide the 8 devices"), ("2,2,2", 8, "is not DATA,MODEL")],
)
def test_bad_mesh_spec_is_a_user_error(spec, n, message):
    with pytest.raises(UserError, match=message):
        parse_mesh_spec(spec, n)


def test_make_mesh_on_this_process():
    import jax

    from arclens.distributed.mesh import make_mesh

    mesh = make_mesh(None)
    assert mesh.axis_names == ("data", "model")
    assert mesh.shape == {"data": jax.device_count(), "model": 1}
    with pytest.raises(UserError, match="--mesh"):
        make_mesh(f"{jax.device_count() + 1},1")


def _process(coordinator=None, num_processes=None, process_id=None):
    """The flags, each defaulting to its deployment variable, as `arclens extract` reads them."""
    return ProcessSettings.from_flags(coordinator, num_processes, process_id)


def test_single_process_is_a_no_op(monkeypatch):
    for name in ("ARCLENS_COORDINATOR", "JAX_COORDINATOR_ADDRESS", "ARCLENS_NUM_PROCESSES",
                 "JAX_NUM_PROCESSES", "ARCLENS_PROCESS_ID", "JAX_PROCESS_ID"):
        monkeypatch.delenv(name, raising=False)
    assert initialize() == Runtime(0, 1)
    assert initialize(_process(coordinator="127.0.0.1:1", num_processes=1, process_id=0)) == Runtime(0, 1)
    from arclens.store.format import writer_name

    assert writer_name(3, host="vm7", pid=42) == "vm7-p3-42"
    assert writer_name(3, host="vm7") == f"vm7-p3-{os.getpid()}"
    assert writer_name(0, "w2", host="vm.7/x", pid=1) == "vm.7_x-w2-p0-1"


@pytest.mark.parametrize(
    "kw, env, message",
    [({"coordinator": "h:1"}, {}, "go together"),
     ({"coordinator": "h:1", "num_processes": 2, "process_id": 2}, {}, "must be in 0..1"),
     ({"coordinator": "nohostport", "num_processes": 2, "process_id": 0}, {}, "HOST:PORT"),
     ({}, {"ARCLENS_COORDINATOR": "h:1", "ARCLENS_NUM_PROCESSES": "two", "ARCLENS_PROCESS_ID": "0"},
      "expected an integer")],
)
def test_bad_distributed_settings(monkeypatch, kw, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=message):
        initialize(_process(**kw))
