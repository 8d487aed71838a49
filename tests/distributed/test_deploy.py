"""deploy/tpu.py --dry-run: the exact gcloud commands for pods, fleets and preempted VMs."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "tpu.py"
EXTRACT = ["--model", "Qwen/Qwen2.5-0.5B", "--tasks", "arc-agi-1/evaluation", "--out", "gs://b/store",
           "--layers", "6", "12"]


def dry(*args: str, ok: bool = True) -> list[list[str]]:
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", *args], check=False, capture_output=True,
                          text=True, timeout=60)
    assert (done.returncode == 0) == ok, done.stderr
    return [shlex.split(line) for line in done.stdout.splitlines() if line and not line.startswith("#")]


def test_create_fleet_of_spot_vms():
    cmds = dry("create", "--fleet", "arc", "--count", "3", "--zone", "us-west4-a", "--spot", "--project", "p")
    assert cmds == [
        ["gcloud", "compute", "tpus", "tpu-vm", "create", f"arc-00{i}", "--zone=us-west4-a", "--project=p",
         "--accelerator-type=v5litepod-8", "--version=v2-alpha-tpuv5-lite", "--spot"]
        for i in range(3)
    ]


def test_status_and_delete():
    assert dry("status", "--fleet", "arc", "--zone", "z") == [[
        "gcloud", "compute", "tpus", "tpu-vm", "list", "--zone=z", "--filter=name~^arc",
        "--format=table(name.basename(),state,acceleratorType.basename(),health)"]]
    assert dry("delete", "--pod", "big", "--zone", "z") == [
        ["gcloud", "compute", "tpus", "tpu-vm", "delete", "big", "--zone=z", "--quiet"]]


def test_launch_on_every_host_of_a_pod():
    (cmd,) = dry("launch", "--pod", "p64", "--zone", "z", "--accelerator-type", "v5litepod-64", "--", *EXTRACT)
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "p64"] and "--worker=all" in cmd
    remote = cmd[-1].removeprefix("--command=")
    # Same command on every host, no worker ids: jax.distributed detects the slice by itself.
    assert "nohup arclens extract " + shlex.join(EXTRACT) + " > arclens-extract.log" in remote
    assert "--worker-id" not in remote and remote.endswith("&")


def test_launch_fleet_gives_each_vm_its_worker_id():
    cmds = dry("launch", "--fleet", "arc", "--count", "2", "--zone", "z", "--claim-ttl", "60",
               "--wheel", "gs://b/arclens-0.1.0-py3-none-any.whl", "--", *EXTRACT)
    assert [c[5] for c in cmds] == ["arc-000", "arc-001"]
    for i, cmd in enumerate(cmds):
        remote = cmd[-1].removeprefix("--command=")
        steps = remote.split(" && ")
        assert steps[0] == "gcloud storage cp gs://b/arclens-0.1.0-py3-none-any.whl /tmp/arclens-0.1.0-py3-none-any.whl"
        assert "pip install" in steps[1] and "'/tmp/arclens-0.1.0-py3-none-any.whl[gcs]'" in steps[1]
        assert f"nohup arclens extract {shlex.join(EXTRACT)} --worker-id {i} --num-workers 2 --claim-ttl 60 >" in steps[2]
        assert "ARCLENS_" not in remote  # settings travel as flags, never as environment variables


def test_launch_needs_extract_args():
    dry("launch", "--fleet", "arc", "--count", "2", "--zone", "z", ok=False)


def test_recreate_only_the_preempted_vms(tmp_path):
    listing = [
        {"name": "projects/p/locations/z/nodes/arc-000", "state": "READY"},
        {"name": "projects/p/locations/z/nodes/arc-001", "state": "PREEMPTED"},
        # arc-002 is missing entirely (deleted by hand): created again, nothing to delete.
        {"name": "projects/p/locations/z/nodes/other-000", "state": "PREEMPTED"},
    ]
    f = tmp_path / "list.json"
    f.write_text(json.dumps(listing))
    cmds = dry("recreate-preempted", "--fleet", "arc", "--count", "3", "--zone", "z", "--spot",
               "--list-json", str(f), "--", *EXTRACT)
    verbs = [(c[4], c[5]) for c in cmds]
    assert verbs == [("delete", "arc-001"), ("create", "arc-001"), ("create", "arc-002"),
                     ("ssh", "arc-001"), ("ssh", "arc-002")]
    assert "--spot" in cmds[1]
    assert "--worker-id 2 --num-workers 3" in cmds[-1][-1]


def test_recreate_dry_run_without_listing_only_lists():
    assert dry("recreate-preempted", "--fleet", "arc", "--count", "2", "--zone", "z") == [[
        "gcloud", "compute", "tpus", "tpu-vm", "list", "--zone=z", "--filter=name~^arc", "--format=json"]]
