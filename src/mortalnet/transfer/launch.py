"""Running a community: in this process (simulation) or as real processes over torch.distributed.

    simulate(config, mode, n, seed)             all N agents here, SimulatedGroup (deterministic)
    launch(config, mode, n, seed, out_dir)      N processes (spawn: our own, with the env://
                                                variables torchrun sets; torchrun: `torchrun
                                                --standalone --nproc-per-node N`), each running
                                                `python -m mortalnet.transfer.launch SPEC`

Each process writes `agent<r>.json` (atomically, after every epoch), so a finished agent's record
survives whatever happens to the others. The parent waits at most `run_timeout` seconds, then kills
what is left; an agent that died is reported as such, never waited for.

Note on launchers: torchrun's elastic agent stops every worker when one fails, so with `torchrun`
a killed agent ends the community (the survivors keep the records they wrote and say they were
terminated). With `spawn` the launcher hosts the rendezvous TCPStore and watches its processes;
when one dies it publishes the survivors (`members<k>`), the survivors' next collective fails
(connection closed, or `collective_timeout`) and they form a new group of N - 1 and go on.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mortalnet import config as cfgmod
from mortalnet.runs import atomic_write_json
from mortalnet.transfer.collectives import DistributedGroup, SimulatedGroup
from mortalnet.transfer.community import CommunityConfig, train_community


def simulate(config: CommunityConfig, mode: str, n_agents: int, seed: int,
             device: torch.device | str = "cpu") -> list[dict[str, Any]]:
    """All agents in this process; returns their records in rank order."""
    group = SimulatedGroup(n_agents)
    records = train_community(config, mode, n_agents, group, seed, torch.device(device))
    return [records[r] for r in range(n_agents)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: CommunityConfig, mode: str, n_agents: int, seed: int, out_dir: str | Path,
           device: torch.device | str = "cpu", launcher: str | None = None) -> list[dict[str, Any]]:
    """Run the community as N processes; returns the agents' records (rank order).

    A record whose process never wrote one (it crashed before its first epoch) is
    {"rank": r, "status": "missing", ...} with the process's exit code and the tail of its log.
    """
    launcher = launcher or config.launcher
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = {"config": cfgmod.to_dict(config), "mode": mode, "n_agents": n_agents, "seed": seed,
            "device": str(torch.device(device).type), "out": str(out)}
    spec_path = out / "spec.json"
    atomic_write_json(spec_path, spec)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    src = str(Path(__file__).resolve().parents[2])  # the mortalnet sources this process runs
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    worker = [sys.executable, "-m", "mortalnet.transfer.launch", str(spec_path)]
    procs: list[subprocess.Popen] = []
    logs = []
    store = None
    if launcher == "spawn":
        import datetime

        import torch.distributed as dist

        port = _free_port()
        # the launcher hosts the rendezvous store and, after a death, publishes who is still alive
        store = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False,
                              timeout=datetime.timedelta(seconds=config.collective_timeout))
        for r in range(n_agents):
            e = dict(env, MORTALNET_STORE=f"127.0.0.1:{port}", RANK=str(r), WORLD_SIZE=str(n_agents),
                     LOCAL_RANK=str(r), LOCAL_WORLD_SIZE=str(n_agents))
            log = open(out / f"agent{r}.log", "wb")
            logs.append(log)
            procs.append(subprocess.Popen(worker, env=e, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    elif launcher == "torchrun":
        log = open(out / "torchrun.log", "wb")
        logs.append(log)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n_agents}",
               "--max-restarts=0", "--module", "mortalnet.transfer.launch", str(spec_path)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    else:
        raise ValueError(f"unknown launcher {launcher!r}; valid: spawn, torchrun (or use simulate)")
    deadline = time.monotonic() + config.run_timeout
    timed_out = False
    generation, gone = 0, set()

    def on_term(signum, frame):  # the launcher is being stopped: take the agents down with it
        raise SystemExit(f"launcher terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        while any(p.poll() is None for p in procs):
            if store is not None:
                failed = {r for r, p in enumerate(procs) if p.poll() not in (None, 0)}
                if failed - gone:  # an agent died: tell the survivors who is left
                    gone |= failed
                    generation += 1
                    alive = [r for r, p in enumerate(procs) if p.poll() is None]
                    store.set(f"members{generation}", json.dumps(alive))
            if time.monotonic() > deadline:
                timed_out = True
                for p in procs:
                    if p.poll() is None:
                        os.killpg(p.pid, signal.SIGKILL)
                break
            time.sleep(0.2)
    finally:
        signal.signal(signal.SIGTERM, previous)
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        for log in logs:
            log.close()
    codes = [p.returncode for p in procs]
    records = []
    for r in range(n_agents):
        path = out / f"agent{r}.json"
        rec = json.loads(path.read_text()) if path.exists() else {"rank": r, "status": "missing", "history": []}
        code = codes[r] if launcher == "spawn" else codes[0]
        rec["exit_code"] = code
        if timed_out and rec.get("status") == "running":
            rec["status"] = "timed out"
        elif rec.get("status") == "running":  # its process ended without finishing its record
            rec["status"] = "crashed" if code else rec["status"]
        if rec["status"] in ("missing", "crashed", "failed"):
            logf = out / (f"agent{r}.log" if launcher == "spawn" else "torchrun.log")
            rec["log_tail"] = logf.read_text(errors="replace")[-2000:] if logf.exists() else ""
        records.append(rec)
    return records


def worker_main(spec_path: str) -> int:
    """One agent's process (started by `launch` or by torchrun): join the group, train, write the record."""
    spec = json.loads(Path(spec_path).read_text())
    config = cfgmod.from_dict(CommunityConfig, spec["config"])
    out = Path(spec["out"])
    torch.set_num_threads(1)
    device = torch.device("cpu")
    if spec["device"] == "cuda" and torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        torch.cuda.set_device(device)
    rank = int(os.environ.get("RANK", 0))

    def write(r: int, rec: dict) -> None:
        atomic_write_json(out / f"agent{r}.json", rec)

    class Terminated(Exception):
        """SIGTERM: the launcher stops this agent (torchrun does so when another agent fails)."""

    def on_term(signum, frame):
        raise Terminated("terminated by the launcher (SIGTERM), e.g. torchrun after another agent failed")

    signal.signal(signal.SIGTERM, on_term)
    group = None
    try:
        group = DistributedGroup(config.collective_timeout, config.backend, device)
        if group.world_size != spec["n_agents"]:
            raise RuntimeError(f"the group has {group.world_size} agents, the spec asks for {spec['n_agents']}")
        train_community(config, spec["mode"], spec["n_agents"], group, spec["seed"], device, write)
    except Exception as err:  # record why this agent stopped, then fail loudly
        path = out / f"agent{rank}.json"
        rec = json.loads(path.read_text()) if path.exists() else {"rank": rank, "history": []}
        rec.update(status="terminated" if isinstance(err, Terminated) else "failed",
                   error=f"{type(err).__name__}: {err}")
        if rec.get("history"):
            rec.setdefault("final", rec["history"][-1])
        write(rank, rec)
        print(f"mortalnet community agent {rank}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        if group is not None:
            group.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m mortalnet.transfer.launch SPEC.json")
    sys.exit(worker_main(sys.argv[1]))
