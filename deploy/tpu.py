#!/usr/bin/env python3
"""Cloud TPU VMs for arclens: create, status, recreate-preempted, launch, delete.

Two layouts (docs/SCALING.md walks through both):

- ``--pod NAME``: one multi-host slice (e.g. v5litepod-64, 16 hosts). ``launch`` runs the same
  ``arclens extract`` on every host (``--worker=all``); jax.distributed finds its peers by itself.
- ``--fleet PREFIX --count N``: N single-host VMs ``PREFIX-000`` ... (e.g. spot v5litepod-8) that
  share nothing but a bucket. ``launch`` starts worker ``i`` of ``N`` on VM ``i``; the store's
  claim objects hand out the work, and a preempted VM's units are taken over by the others.

Every sub-command takes ``--dry-run``, which prints the gcloud commands instead of running them.
``recreate-preempted`` needs to know which VMs are preempted: it asks ``gcloud ... list``, or reads
that listing's JSON from ``--list-json FILE`` (how the dry run is tested). Standard library only,
so it runs on any workstation with the gcloud CLI.

Examples::

    deploy/tpu.py create --fleet arc --count 8 --zone us-west4-a --accelerator-type v5litepod-8 --spot
    deploy/tpu.py launch --fleet arc --count 8 --zone us-west4-a -- \\
        --model Qwen/Qwen2.5-0.5B --tasks arc-agi-1/evaluation --out gs://BUCKET/store --layers 6 12 18 23
    deploy/tpu.py recreate-preempted --fleet arc --count 8 --zone us-west4-a --spot -- <same extract args>
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys

DEFAULT_ACCELERATOR = "v5litepod-8"
DEFAULT_VERSION = "v2-alpha-tpuv5-lite"
PREEMPTED_STATES = {"PREEMPTED", "TERMINATED", "STOPPED"}


def vm_names(args) -> list[str]:
    if args.pod:
        return [args.pod]
    return [f"{args.fleet}-{i:03d}" for i in range(args.count)]


def _common(args) -> list[str]:
    flags = [f"--zone={args.zone}"]
    if args.project:
        flags.append(f"--project={args.project}")
    return flags


def create_cmd(args, name: str) -> list[str]:
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", "create", name, *_common(args),
           f"--accelerator-type={args.accelerator_type}", f"--version={args.version}"]
    if args.spot:
        cmd.append("--spot")
    return cmd


def delete_cmd(args, name: str) -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "delete", name, *_common(args), "--quiet"]


def list_cmd(args) -> list[str]:
    prefix = args.pod or args.fleet
    return ["gcloud", "compute", "tpus", "tpu-vm", "list", *_common(args), f"--filter=name~^{prefix}",
            "--format=json"]


def status_cmd(args) -> list[str]:
    prefix = args.pod or args.fleet
    return ["gcloud", "compute", "tpus", "tpu-vm", "list", *_common(args), f"--filter=name~^{prefix}",
            "--format=table(name.basename(),state,acceleratorType.basename(),health)"]


def remote_script(args, worker_index: int | None) -> str:
    """The shell line one host runs: install, then extract in the background with a log.

    ``nohup ... &`` outlives the ssh session; on preemption the VM's shutdown sends SIGTERM, and
    arclens commits what it has, releases its claim and exits 0."""
    extract = ["arclens", "extract", *args.extract_args]
    if worker_index is not None:
        extract += ["--worker-id", str(worker_index), "--num-workers", str(args.count)]
        if args.claim_ttl:
            extract += ["--claim-ttl", f"{args.claim_ttl:g}"]
    run = shlex.join(extract)
    parts = []
    if args.wheel:
        local = "/tmp/" + args.wheel.rsplit("/", 1)[-1]
        copy = ["gcloud", "storage", "cp", args.wheel, local] if args.wheel.startswith("gs://") else None
        if copy:
            parts.append(shlex.join(copy))
        parts.append(shlex.join(["python3", "-m", "pip", "install", "-q", "-U", f"{local if copy else args.wheel}[gcs]",
                                 "jax[tpu]"]))
    if args.install:
        parts.append(args.install)
    # pip --user puts console scripts in ~/.local/bin, which a non-interactive ssh has no PATH for.
    parts.append(f'PATH="$HOME/.local/bin:$PATH" nohup {run} > {args.log} 2>&1 < /dev/null &')
    return " && ".join(parts)


def launch_cmds(args, names: list[str] | None = None) -> list[list[str]]:
    if not args.extract_args:
        raise SystemExit("launch: give the extract arguments after '--' (e.g. -- --model ... --tasks ... --out gs://...)")
    if args.pod:
        return [["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.pod, *_common(args), "--worker=all",
                 f"--command={remote_script(args, None)}"]]
    everyone = vm_names(args)
    return [["gcloud", "compute", "tpus", "tpu-vm", "ssh", name, *_common(args), "--worker=all",
             f"--command={remote_script(args, everyone.index(name))}"] for name in (names or everyone)]


def preempted(listing: list[dict], names: list[str]) -> list[str]:
    """Names among ``names`` that are preempted/terminated, or missing from the listing."""
    state = {vm.get("name", "").rsplit("/", 1)[-1]: vm.get("state", "") for vm in listing}
    return [n for n in names if state.get(n, "MISSING") in PREEMPTED_STATES | {"MISSING"}]


class Runner:
    def __init__(self, dry_run: bool):
        self.dry_run = dry_run

    def run(self, cmd: list[str], capture: bool = False) -> str:
        print(("+ " if not self.dry_run else "") + shlex.join(cmd), flush=True)
        if self.dry_run:
            return ""
        done = subprocess.run(cmd, check=True, text=True, stdout=subprocess.PIPE if capture else None)
        return done.stdout or ""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extract_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extract_args = argv[:cut], argv[cut + 1:]
    p = argparse.ArgumentParser(prog="deploy/tpu.py", description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["create", "status", "recreate-preempted", "launch", "delete"])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--pod", help="one multi-host TPU slice of this name")
    where.add_argument("--fleet", help="name prefix of N single-host VMs (PREFIX-000 ...)")
    p.add_argument("--count", type=int, default=1, help="fleet size")
    p.add_argument("--zone", required=True)
    p.add_argument("--project", default=None)
    p.add_argument("--accelerator-type", default=DEFAULT_ACCELERATOR)
    p.add_argument("--version", default=DEFAULT_VERSION, help="TPU VM runtime image")
    p.add_argument("--spot", action="store_true", help="spot (preemptible) VMs")
    p.add_argument("--wheel", default=None, help="arclens wheel (gs://... or a URL) to pip install on every host with jax[tpu]")
    p.add_argument("--install", default=None, help="any other setup line run on every host before extract")
    p.add_argument("--log", default="arclens-extract.log", help="log file on each host")
    p.add_argument("--claim-ttl", type=float, default=None, help="--claim-ttl SECONDS for the fleet's workers")
    p.add_argument("--list-json", default=None, help="recreate-preempted: read the VM listing from this file")
    p.add_argument("--dry-run", action="store_true", help="print the gcloud commands, run nothing")
    args = p.parse_args(argv)
    args.extract_args = extract_args
    if args.fleet and args.count < 1:
        p.error("--count must be at least 1")
    if args.pod and args.count != 1:
        p.error("--count is for --fleet; a pod is one slice")

    r = Runner(args.dry_run)
    names = vm_names(args)
    if args.command == "create":
        for name in names:
            r.run(create_cmd(args, name))
    elif args.command == "delete":
        for name in names:
            r.run(delete_cmd(args, name))
    elif args.command == "status":
        r.run(status_cmd(args))
    elif args.command == "launch":
        for cmd in launch_cmds(args):
            r.run(cmd)
    else:  # recreate-preempted
        if args.list_json:
            with open(args.list_json) as f:
                listing = json.load(f)
        else:
            out = r.run(list_cmd(args), capture=True)
            if args.dry_run:
                print("# dry run without --list-json: cannot know which VMs are preempted", file=sys.stderr)
                return 0
            listing = json.loads(out or "[]")
        gone = preempted(listing, names)
        print(f"# preempted or missing: {', '.join(gone) if gone else 'none'}", flush=True)
        for name in gone:
            if name in {vm.get("name", "").rsplit("/", 1)[-1] for vm in listing}:
                r.run(delete_cmd(args, name))
            r.run(create_cmd(args, name))
        if gone and args.extract_args:
            for cmd in launch_cmds(args, gone):
                r.run(cmd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
