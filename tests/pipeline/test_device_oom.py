"""The device running out of memory is one line with what to change, exit 1, not a traceback.

The error is XLA's own: a real 1 TB allocation fails with RESOURCE_EXHAUSTED on the CPU backend
(as a too-large batch does on a GPU, or at compile time on a TPU), raised where a batch runs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from tests.support.cli import extract_args
from tests.support.tasks import write_tasks

from arclens.cli import main
from arclens.pipeline.device import CaptureRunner


def _exhaust_device_memory():
    jax.jit(lambda: jnp.ones((1 << 38,), jnp.float32))().block_until_ready()


def test_extract_out_of_device_memory_is_one_line(tmp_path, tiny_model_dir, monkeypatch, capsys):
    tasks = write_tasks(tmp_path / "tasks.json", n_tasks=2)

    def dispatch(self, tokens, lengths, shape, **kwargs):
        _exhaust_device_memory()

    monkeypatch.setattr(CaptureRunner, "dispatch", dispatch)
    rc = main(extract_args(tiny_model_dir, tasks, tmp_path / "store", "--layers", "1", "--dtype", "float32",
                           "--tokens-per-batch", "1024"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1, err
    assert err[0].startswith("arclens: error: the device ran out of memory on a batch of ")
    assert "RESOURCE_EXHAUSTED" in err[0] and "lower --tokens-per-batch (this run: 1024" in err[0]
    assert "--mesh DATA,MODEL" in err[0] and "Traceback" not in err[0]


def test_infer_out_of_device_memory_is_one_line(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import arclens.model.generate as generate_module

    tasks = write_tasks(tmp_path / "tasks.json", n_tasks=2)

    def generate(*args, **kwargs):
        _exhaust_device_memory()
        yield from ()

    monkeypatch.setattr(generate_module, "generate", generate)
    rc = main(["infer", "--model", str(tiny_model_dir), "--tasks", str(tasks), "--out", str(tmp_path / "run"),
               "--predictions-per-task", "2", "--max-new-tokens", "8", "--batch-size", "4", "--dtype", "float32",
               "--devices", "1"])
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.startswith("arclens: error")]
    assert rc == 1 and len(err) == 1, err
    assert "the device ran out of memory on a generation batch of 4 prompts" in err[0]
    assert "lower --batch-size (this run: 4) or --max-new-tokens (this run: 8)" in err[0]


def test_other_device_errors_keep_their_traceback():
    import pytest

    from arclens.errors import device_out_of_memory

    err = RuntimeError("INTERNAL: something else")
    assert device_out_of_memory(err, "x", "y") is err
    with pytest.raises(RuntimeError):
        raise device_out_of_memory(err, "x", "y")
