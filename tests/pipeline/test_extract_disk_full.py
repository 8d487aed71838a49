"""A full disk mid-run: one line on stderr (no traceback), exit 1, every committed shard intact, no
partial file left, and the same command resumes once there is space."""

from __future__ import annotations

import errno

from tests.support.cli import extract_args
from tests.support.stores import stored
from tests.support.tasks import write_tasks

import arclens.store.writer as store_writer
from arclens.cli import main

OPTIONS = ["--layers", "1", "3", "--activation", "residual", "--dtype", "float32", "--predictions-per-task", "2",
           "--tokens-per-batch", "1024", "--shard-mb", "0.2"]


def test_a_full_disk_stops_cleanly_and_the_rerun_resumes(tmp_path, tiny_model_dir, monkeypatch, capsys):
    tasks = write_tasks(tmp_path / "tasks.json", n_tasks=4)
    dest = tmp_path / "store"
    real_write_shard = store_writer.write_shard
    written = []

    def fills_up_on_the_third_shard(f, *args, **kwargs):
        if len(written) == 2:
            f.write(b"\0" * 1000)  # a partial shard, as a real ENOSPC leaves behind
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(1)
        return real_write_shard(f, *args, **kwargs)

    monkeypatch.setattr(store_writer, "write_shard", fills_up_on_the_third_shard)
    assert main(extract_args(tiny_model_dir, tasks, dest, *OPTIONS)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith(f"arclens: error: No space left on device writing {dest}/shards/")
    assert "rerun the same command to resume" in err[0]
    assert not list((dest / "shards").glob(".*")), "the partial shard is removed"
    assert main(["verify", str(dest)]) == 0
    first = stored(dest)
    assert len(first) > 0 and len(list((dest / "index").iterdir())) == 2

    monkeypatch.setattr(store_writer, "write_shard", real_write_shard)  # space again
    assert main(extract_args(tiny_model_dir, tasks, dest, *OPTIONS)) == 0
    assert main(["verify", str(dest)]) == 0
    after = stored(dest)  # raises if any key is stored twice
    assert main(extract_args(tiny_model_dir, tasks, tmp_path / "clean", *OPTIONS)) == 0
    clean = stored(tmp_path / "clean")
    assert set(after) == set(clean) and len(clean) > len(first) and set(first) <= set(after)


def test_other_os_errors_keep_their_traceback(monkeypatch):
    """Only running out of space is an expected condition; any other OSError escaping is a bug
    and must not be dressed up as one line."""
    import pytest

    from arclens import cli

    monkeypatch.setitem(cli.COMMANDS, "inspect", f"{__name__}:_raise_eio")
    with pytest.raises(OSError, match="Input/output error"):
        main(["inspect", "/nowhere"])


def _raise_eio(args):
    raise OSError(errno.EIO, "Input/output error")


def _raise_unavailable(args):
    from arclens.errors import StorageUnavailable

    raise StorageUnavailable("write gs://b/run/shards/w-000003.safetensors: still failing after 6 attempts "
                             "(ServiceUnavailable: 503)")


def test_a_store_that_stops_answering_is_one_line_and_exit_1(monkeypatch, capsys):
    from arclens import cli

    monkeypatch.setitem(cli.COMMANDS, "inspect", f"{__name__}:_raise_unavailable")
    assert main(["inspect", "gs://b/run"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    want = ("arclens: error: write gs://b/run/shards/w-000003.safetensors: still failing after 6 attempts "
            "(ServiceUnavailable: 503). Everything committed before it is kept; rerun the same command "
            "to resume once the store answers again.")
    assert err == [want]
