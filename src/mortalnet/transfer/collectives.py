"""Collectives for a community of agents, with exact byte counts and no way to hang forever.

Two implementations of one small interface (`Group`), so that the agents' code is the same in a
single-process simulation (tests, determinism) and in real processes (torch.distributed: gloo on
CPU, NCCL on GPU, launched by torchrun or by `launch_workers`):

    all_reduce_mean([t_a for each local agent a]) -> [mean over all agents]      (gradient averaging)
    all_gather([t_a for each local agent a])      -> [(N, *t.shape) stacked]     (exchanging logits)

A process hosts `local_ranks` (all N of them in the simulation, one with torch.distributed).

Byte counts, per agent, are taken at these calls from the tensors themselves (numel x element
size) and defined by what an agent must ship and obtain, independent of the backend's algorithm:

    all_reduce of b bytes:           sent b,  received b          (its gradient out, the average back)
    all_gather of b bytes per agent: sent b,  received (N - 1) b  (its logits out, the others' in)

`wire_bytes` gives, in addition, what a bandwidth-optimal ring algorithm puts on each agent's link
(all-reduce 2 (N - 1) / N b each way, all-gather (N - 1) b each way), as NCCL and gloo implement them.

A peer that dies (killed process) or stalls makes the collective fail within `timeout` seconds:
every failure is raised as `CollectiveError` naming the operation, the agent and the cause.
The survivors may then `regroup()`: form a new group of the agents still alive (in a real
community the launcher, which sees which processes died, publishes the new membership in a
TCPStore it hosts; under plain torchrun there is no such service and regroup() returns False).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch


class CollectiveError(RuntimeError):
    """A collective could not complete: a peer died, stalled past the timeout, or the group broke."""


@dataclass
class ByteCounter:
    """What one agent sent and received through collectives (payload bytes, see module doc)."""

    sent: int = 0
    received: int = 0
    wire_sent: float = 0.0
    wire_received: float = 0.0
    calls: dict[str, int] = field(default_factory=dict)

    def add(self, op: str, sent: int, received: int, wire: float) -> None:
        self.sent += sent
        self.received += received
        self.wire_sent += wire
        self.wire_received += wire
        self.calls[op] = self.calls.get(op, 0) + 1

    def as_dict(self) -> dict:
        return {"bytes_sent": self.sent, "bytes_received": self.received, "wire_bytes_sent": self.wire_sent,
                "wire_bytes_received": self.wire_received, "calls": dict(self.calls)}


def payload_bytes(op: str, nbytes: int, world: int) -> tuple[int, int]:
    """(sent, received) payload bytes of one agent for `op` on a tensor of `nbytes` among `world` agents."""
    if op == "all_reduce":
        return nbytes, nbytes
    if op == "all_gather":
        return nbytes, (world - 1) * nbytes
    raise ValueError(f"unknown collective {op!r}; valid: all_reduce, all_gather")


def wire_bytes(op: str, nbytes: int, world: int) -> float:
    """Bytes a ring algorithm sends (and receives) on each agent's link for `op`."""
    if world <= 1:
        return 0.0
    if op == "all_reduce":
        return 2.0 * (world - 1) / world * nbytes
    if op == "all_gather":
        return float((world - 1) * nbytes)
    raise ValueError(f"unknown collective {op!r}; valid: all_reduce, all_gather")


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class Group:
    """The living agents (`members`, by original rank, in collective order), of which this process
    hosts `local_ranks`; counts bytes per agent (keyed by original rank)."""

    members: list[int]
    local_ranks: list[int]

    def __init__(self, members: list[int], local_ranks: list[int]) -> None:
        if not members:
            raise ValueError("a group needs at least one agent")
        self.members = list(members)
        self.local_ranks = list(local_ranks)
        self.counters = {r: ByteCounter() for r in self.local_ranks}
        self.generation = 0

    @property
    def world_size(self) -> int:
        return len(self.members)

    def _count(self, op: str, tensors: list[torch.Tensor]) -> None:
        for r, t in zip(self.local_ranks, tensors):
            sent, received = payload_bytes(op, _nbytes(t), self.world_size)
            self.counters[r].add(op, sent, received, wire_bytes(op, _nbytes(t), self.world_size))

    def _check(self, tensors: list[torch.Tensor]) -> None:
        if len(tensors) != len(self.local_ranks):
            raise ValueError(f"{len(tensors)} tensors for {len(self.local_ranks)} local agents")

    def all_reduce_mean(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        raise NotImplementedError

    def all_gather(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        raise NotImplementedError

    def kill(self, rank: int) -> None:
        """Agent `rank` dies now (fault injection)."""
        raise NotImplementedError

    def regroup(self) -> bool:
        """After a failed collective: continue as the group of the agents still alive.

        Returns False when no membership service is available (then go on alone); raises
        CollectiveError if the new group cannot be formed.
        """
        return False

    def close(self) -> None:
        """Release the group's resources (never blocks on dead peers)."""


class SimulatedGroup(Group):
    """All N agents in this process; collectives are exact sums in rank order (deterministic).

    A killed agent makes every later collective fail with `CollectiveError`, as a dead process
    does in a real group.
    """

    def __init__(self, world_size: int) -> None:
        super().__init__(list(range(world_size)), list(range(world_size)))
        self.dead: set[int] = set()

    def _alive_or_raise(self, op: str) -> None:
        gone = self.dead.intersection(self.members)
        if gone:
            raise CollectiveError(f"{op} failed: agent(s) {sorted(gone)} died (simulated)")

    def all_reduce_mean(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        self._alive_or_raise("all_reduce")
        self._check(tensors)
        total = tensors[0].clone()
        for t in tensors[1:]:
            total += t
        total /= self.world_size
        self._count("all_reduce", tensors)
        return [total.clone() for _ in tensors]

    def all_gather(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        self._alive_or_raise("all_gather")
        self._check(tensors)
        stacked = torch.stack(tensors)  # (N, *shape)
        self._count("all_gather", tensors)
        return [stacked.clone() for _ in tensors]

    def kill(self, rank: int) -> None:
        self.dead.add(rank)

    def regroup(self) -> bool:
        self.members = [r for r in self.members if r not in self.dead]
        self.local_ranks = [r for r in self.local_ranks if r not in self.dead]
        self.generation += 1
        return True


class DistributedGroup(Group):
    """One agent per process over torch.distributed (gloo on CPU, NCCL on CUDA).

    Rendezvous: env:// as torchrun sets it up (MASTER_ADDR/PORT, RANK, WORLD_SIZE), or, when
    MORTALNET_STORE=host:port is set (by `mortalnet.transfer.launch`), a TCPStore hosted by the
    launcher, which also publishes the membership after a death (key `members<generation>`) so that
    the survivors can `regroup`. `timeout` bounds every collective and rendezvous; with NCCL,
    blocking waits are turned on so that a timeout raises here instead of hanging.
    """

    def __init__(self, timeout_s: float, backend: str = "auto", device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        if backend == "auto":
            backend = "nccl" if self.device.type == "cuda" else "gloo"
        if backend == "nccl":
            os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
        self.backend = backend
        self.timeout_s = timeout_s
        self.rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        self.store = None
        address = os.environ.get("MORTALNET_STORE", "")
        if address:
            import torch.distributed as dist

            host, port = address.rsplit(":", 1)
            self.store = dist.TCPStore(host, int(port), is_master=False, timeout=self._timeout())
        super().__init__(list(range(world)), [self.rank])
        self._init(self.rank, world)

    def _timeout(self) -> datetime.timedelta:
        return datetime.timedelta(seconds=self.timeout_s)

    def _init(self, rank: int, world: int) -> None:
        import torch.distributed as dist

        try:
            if self.store is not None:
                store = dist.PrefixStore(f"gen{self.generation}/", self.store)
                dist.init_process_group(self.backend, store=store, rank=rank, world_size=world, timeout=self._timeout())
            else:
                dist.init_process_group(self.backend, timeout=self._timeout())
        except Exception as err:  # rendezvous failure: a peer never came
            raise CollectiveError(f"agent {self.rank}: could not form the group of {world} ({self.backend}): "
                                  f"{type(err).__name__}: {err}") from err

    def _fail(self, op: str, err: Exception) -> CollectiveError:
        first = str(err).splitlines()[0] if str(err) else ""
        return CollectiveError(f"agent {self.rank}: {op} failed within {self.timeout_s:g} s "
                               f"(a peer died or stalled): {type(err).__name__}: {first}")

    def all_reduce_mean(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        import torch.distributed as dist

        self._check(tensors)
        t = tensors[0].clone()
        try:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        except Exception as err:  # DistBackendError / RuntimeError: connection closed, timeout
            raise self._fail("all_reduce", err) from err
        t /= self.world_size
        self._count("all_reduce", tensors)
        return [t]

    def all_gather(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        import torch.distributed as dist

        self._check(tensors)
        t = tensors[0].contiguous()
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        try:
            dist.all_gather(parts, t)
        except Exception as err:
            raise self._fail("all_gather", err) from err
        self._count("all_gather", tensors)
        return [torch.stack(parts)]

    def kill(self, rank: int) -> None:
        if rank == self.rank:
            import signal

            os.kill(os.getpid(), signal.SIGKILL)

    def regroup(self) -> bool:
        import json

        if self.store is None:
            return False
        self.close()
        self.generation += 1
        key = f"members{self.generation}"
        try:
            self.store.wait([key], self._timeout())
            members = json.loads(self.store.get(key).decode())
        except Exception as err:
            raise CollectiveError(f"agent {self.rank}: no new membership from the launcher: {err}") from err
        if self.rank not in members:
            raise CollectiveError(f"agent {self.rank} is not among the survivors {members}")
        self.members = list(members)
        self._init(self.members.index(self.rank), len(self.members))
        return True

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # a broken group (dead peer) cannot always be torn down cleanly
                pass
