"""Starting a group of processes on torch.distributed (gloo on CPU, NCCL on GPU).

Two ways in:
  * under `torchrun --nproc-per-node N ...` (RANK/WORLD_SIZE/MASTER_* in the environment):
    `init_from_env()` joins the group torchrun made;
  * from Python or a test: `spawn(fn, world_size, ...)` starts the processes itself
    (torch.multiprocessing, spawn start method) on a free local port.
Every collective and point-to-point call then runs under the group's timeout, so a rank that
dies makes the others fail with an error after at most `timeout_s`, never hang. Results come
back as JSON files written by each rank (no pickles cross process boundaries).
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mortalnet.runs import RunError


class RankFailedError(RunError):
    """A rank of a process group died, timed out or raised; the message names it (one line).

    A RunError, so that `mortalnet run` reports it as `mortalnet: error: ...` (exit 1) and
    marks the run failed; still a RuntimeError, as torch.distributed's own errors are."""


def free_port() -> int:
    """A TCP port nobody listens on right now (for the rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend_for(device: torch.device) -> str:
    """nccl for CUDA devices, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_process_group(rank: int, world_size: int, backend: str, timeout_s: float,
                       addr: str | None = None, port: int | None = None) -> None:
    """Join (or create) the default process group with a timeout on every operation."""
    if addr is not None:
        os.environ["MASTER_ADDR"] = addr
    if port is not None:
        os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group(
        backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s)
    )


def init_from_env(backend: str = "gloo", timeout_s: float = 60.0) -> tuple[int, int]:
    """Join the group torchrun created; returns (rank, world_size)."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    init_process_group(rank, world, backend, timeout_s)
    return rank, world


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def _entry(rank: int, fn: Callable, world_size: int, backend: str, timeout_s: float, port: int,
           threads: int, out_dir: str, args: tuple) -> None:
    torch.set_num_threads(threads)
    init_process_group(rank, world_size, backend, timeout_s, "127.0.0.1", port)
    try:
        result = fn(rank, world_size, *args)
        if result is not None:
            Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
        dist.barrier()  # leave together: no rank tears gloo down while another still uses it
    finally:
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - the group may be broken already
            pass
    # Success: the result is on disk. Leave without interpreter finalization, where gloo's worker
    # threads can still hold tensors and abort the process ("terminate called without an active
    # exception", SIGABRT; seen now and then on a loaded machine). Failures raise above instead,
    # so that mp.spawn carries the traceback to the parent.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(fn: Callable[..., dict | None], world_size: int, args: tuple = (), backend: str = "gloo",
          timeout_s: float = 60.0, threads_per_rank: int = 1) -> list[dict | None]:
    """Run fn(rank, world_size, *args) in `world_size` new processes; return each rank's dict.

    fn must be importable (a module-level function). If any rank fails or dies, the others are
    stopped and RankFailedError says which rank and why. Check the configuration before calling
    this: an error raised inside a rank can only come back as a RankFailedError.
    """
    import torch.multiprocessing as mp

    if world_size < 1 or timeout_s <= 0:
        raise ValueError(f"spawn needs world_size >= 1 and timeout_s > 0, got {world_size} and {timeout_s}")

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mortalnet-ranks-") as out_dir:
        try:
            mp.spawn(_entry, args=(fn, world_size, backend, timeout_s, port, threads_per_rank, out_dir, args),
                     nprocs=world_size, join=True)
        except mp.ProcessExitedException as err:
            raise RankFailedError(f"rank {err.error_index} died (exit code {err.exit_code}); "
                                  "the other ranks were stopped") from None
        except mp.ProcessRaisedException as err:
            first = str(err).strip().splitlines()
            raise RankFailedError("a rank failed: " + (first[-1] if first else "unknown error")) from None
        results = []
        for rank in range(world_size):
            path = Path(out_dir, f"rank{rank}.json")
            results.append(json.loads(path.read_text()) if path.exists() else None)
        return results


def run_or_spawn(fn: Callable[..., dict | None], world_size: int, args: tuple = (), backend: str = "gloo",
                 timeout_s: float = 60.0, threads_per_rank: int = 1) -> list[dict | None] | dict | None:
    """Under torchrun: run this rank's part and return its dict. Otherwise spawn `world_size` ranks."""
    if launched_by_torchrun():
        rank, world = init_from_env(backend, timeout_s)
        try:
            return fn(rank, world, *args)
        finally:
            dist.destroy_process_group()
    return spawn(fn, world_size, args, backend, timeout_s, threads_per_rank)


def describe_error(err: BaseException, rank: int, peer: int | None = None) -> str:
    """A readable one-line account of a failed distributed call."""
    who = f"rank {rank}" + (f" waiting for rank {peer}" if peer is not None else "")
    return f"{who}: {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"


def result_dict(**kw: Any) -> dict[str, Any]:
    """JSON-safe result (floats/ints/strings/lists)."""
    return json.loads(json.dumps(kw, default=float))
