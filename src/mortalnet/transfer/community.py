"""A community of agents that learn from their own data shards and share what they learn.

The talk's central comparison (MISSION.md, sec. 1.3), made quantitative:
  digital    identical agents (same initial weights) average their gradients every step by an
             all-reduce: bandwidth = the number of weights per exchange ("weight sharing");
  codistill  agents with their own initial weights exchange only predictions: every k steps they
             all-gather their logits on a shared batch of E unlabeled transfer inputs and each one
             distills toward the average of the others' soft targets (Anil et al. 2018,
             codistillation): bandwidth = E x classes numbers per exchange;
  alone      no sharing.
  mortal     the codistill exchange between agents that each live on their own simulated analog
             device (another instance per agent) and learn by activity perturbation: they could
             not share weights even if they wanted to (`MortalCommunityLearner`);
  mortal-alone  the same device agents without any exchange (the control for `mortal`).

`CommunityLearner` is a `Learner` hosting the agents of one process (all N in the single-process
simulation, one per process with torch.distributed); the shared loop `fit` trains it on
x (n, L, D), y (n, L): row i of every agent's shard in one minibatch, each agent its own shard.
Collectives go through a `Group` (`mortalnet.transfer.collectives`) that counts the bytes.

A dead peer makes a collective fail within the group's timeout; the survivors then record the
event and go on alone (no exchange is attempted again), so nobody hangs and every survivor finishes.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mortalnet.config import ConfigError
from mortalnet.data.mnist import MnistConfig, load_mnist
from mortalnet.optim import OptimizerConfig, make_optimizer
from mortalnet.rules.backprop import MLP
from mortalnet.rules.base import Learner
from mortalnet.transfer.collectives import CollectiveError, Group
from mortalnet.training import TrainingConfig, fit
from mortalnet.transfer.device_student import DeviceStudent, DeviceStudentConfig
from mortalnet.transfer.distill import soft_target_loss

MODES = ("digital", "codistill", "alone", "mortal", "mortal-alone")
"""Ways a community can share knowledge (mortal, mortal-alone: agents on devices)."""

Mode = Literal["digital", "codistill", "alone", "mortal", "mortal-alone"]


@dataclass(frozen=True)
class AgentConfig:
    """One agent of a community and how it exchanges knowledge."""

    hidden: tuple[int, ...] = (256, 256)
    """Hidden layers of each agent's ReLU MLP."""
    optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=0.0))
    """Each agent's optimizer."""
    exchange_every: int = 10
    """k: steps between two exchanges of predictions (codistill, mortal)."""
    transfer_batch: int = 1000
    """E: shared unlabeled transfer inputs per exchange (each agent sends E x classes logits); E/k are distilled per step."""
    temperature: float = 1.0
    """T of the soft targets exchanged between agents (same T for sender and receiver)."""
    distill_weight: float = 0.5
    """Weight of the T^2-scaled distillation term toward the others' average soft targets (T^2 w = 4 made two
    agents chasing each other's 10-step-old predictions oscillate; see README)."""
    burn_in_steps: int = 100
    """No exchange of predictions before this step (the others' early guesses carry little)."""
    device: DeviceStudentConfig = field(default_factory=lambda: DeviceStudentConfig(
        optimizer=OptimizerConfig(name="adam", lr=1e-3, momentum=0.9), sigma=0.3, hardware="mild"))
    """Mortal agents: activity perturbation on their own device instance of this preset (seed set per agent)."""

    def __post_init__(self) -> None:
        for name in ("exchange_every", "transfer_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.burn_in_steps < 0:
            raise ConfigError(f"burn_in_steps must be >= 0, got {self.burn_in_steps}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")


class CommunityLearner(Learner):
    """The agents hosted by this process, trained in lockstep with the other processes' agents.

    Args:
        config: agent settings.
        mode: digital | codistill | alone (mortal: MortalCommunityLearner).
        group: collectives over all N agents; its `local_ranks` are the agents hosted here.
        transfer_x: the shared pool of unlabeled transfer inputs (M, D), identical in every process.
        seed: the community's seed (initial weights: per agent, identical copies in digital mode).
        kill_rank, kill_step: fault injection: agent `kill_rank` dies before its step `kill_step`.
        before_death: called with (rank, step) just before a local agent dies (to save its record).
    """

    primary_metric = "error"
    MODES: tuple[str, ...] = ("digital", "codistill", "alone")

    def __init__(self, config: AgentConfig, mode: str, group: Group, transfer_x: torch.Tensor, seed: int,
                 device: torch.device | str = "cpu", input_dim: int = 784, num_classes: int = 10,
                 kill_rank: int = -1, kill_step: int = -1,
                 before_death: Callable[[int, int], None] | None = None) -> None:
        super().__init__(seed, device)
        if mode not in self.MODES:
            raise ValueError(f"{type(self).__name__} mode {mode!r}; valid: {', '.join(self.MODES)}"
                             + (" (mortal agents: MortalCommunityLearner)" if mode == "mortal" else ""))
        self.cfg, self.mode, self.group = config, mode, group
        self.ranks = list(group.local_ranks)
        self.seed, self.num_classes, self.input_dim = seed, num_classes, input_dim
        self.kill_rank, self.kill_step, self.before_death = kill_rank, kill_step, before_death
        self.transfer_x = transfer_x  # (M, D), a plain attribute: not part of the checkpoint
        nets, self.optimizers = [], []
        for r in self.ranks:
            net, opt = self._build_agent(r)
            nets.append(net)
            self.optimizers.append(opt)
        self.nets = nn.ModuleList(nets)
        e = config.transfer_batch
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64, device=self.device_))
        self.register_buffer("alive", torch.ones(len(self.ranks), dtype=torch.bool, device=self.device_))
        self.register_buffer("exchanging", torch.tensor(mode not in ("alone", "mortal-alone"), device=self.device_))
        self.register_buffer("targets", torch.zeros(len(self.ranks), e, num_classes, device=self.device_))
        self.register_buffer("transfer_idx", torch.zeros(e, dtype=torch.int64, device=self.device_))
        self.register_buffer("have_targets", torch.tensor(False, device=self.device_))
        self.events: list[dict[str, Any]] = []

    # -- what an agent is (overridden by MortalCommunityLearner) ----------------------------------
    def _build_agent(self, rank: int) -> tuple[nn.Module, torch.optim.Optimizer]:
        """A digital ReLU MLP and its optimizer; identical initial weights for every agent in digital mode."""
        g = torch.Generator(device=self.device_)
        g.manual_seed(self.seed * 7919 + (0 if self.mode == "digital" else 1 + rank))
        net = MLP(self.input_dim, tuple(self.cfg.hidden), self.num_classes, generator=g, device=self.device_)
        opt = make_optimizer(self.cfg.optimizer, [lin.weight for lin in net.linears], [lin.bias for lin in net.linears])
        return net, opt

    def _forward(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Local agent i's test-time logits (B, C)."""
        net = self.nets[i]
        net.eval()
        return net(x)

    def _agent_update(self, i: int, x: torch.Tensor, y: torch.Tensor,
                      soft: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients of CE(x, y) + distill_weight * T^2 KL(soft) into .grad; returns (loss, train error)."""
        net = self.nets[i]
        net.train()
        logits = net(x)  # (B, C)
        loss = F.cross_entropy(logits, y)
        if soft is not None:
            loss = loss + self.cfg.distill_weight * soft_target_loss(net(soft[0]), soft[1], self.cfg.temperature)
        self.optimizers[i].zero_grad(set_to_none=True)
        loss.backward()
        return loss.detach(), (logits.argmax(1) != y).float().mean().detach()

    def _apply_updates(self) -> None:
        for i, opt in enumerate(self.optimizers):
            if bool(self.alive[i]):
                opt.step()

    def _on_death(self, i: int) -> None:
        """Local agent i has just died."""

    @property
    def n_params(self) -> int:
        """Weights and biases of one agent."""
        return sum(p.numel() for p in self.nets[0].parameters())

    # -- one step of all local agents ----------------------------------------------------------
    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> Mapping[str, torch.Tensor]:
        """x (B, L, D), y (B, L): column i is local agent i's minibatch from its own shard."""
        s = int(self.steps)
        if s == self.kill_step and self.kill_rank in self.ranks:
            self._die(self.kill_rank, s)
        k, burn = self.cfg.exchange_every, self.cfg.burn_in_steps
        distilling = self.mode in ("codistill", "mortal")
        if distilling and bool(self.exchanging) and s >= burn and (s - burn) % k == 0:
            self._exchange((s - burn) // k, s)
        losses, errors = [], []
        for i in range(len(self.nets)):
            if not bool(self.alive[i]):
                continue
            soft = None
            if distilling and bool(self.have_targets):
                c = math.ceil(self.cfg.transfer_batch / k)
                j = ((s - burn) % k) * c  # this step's chunk of the last exchange's transfer batch
                idx = self.transfer_idx[j : j + c]
                if len(idx):
                    soft = (self.transfer_x[idx], self.targets[i, j : j + c])  # (c, D), (c, C)
            loss, err = self._agent_update(i, x[:, i], y[:, i], soft)
            losses.append(loss)
            errors.append(err)
        if self.mode == "digital" and bool(self.exchanging):
            self._average_gradients(s)
        self._apply_updates()
        self.steps += 1
        if not losses:  # every local agent is dead
            zero = torch.zeros((), device=self.device_)
            return {"loss": zero, "train_error": zero}
        return {"loss": torch.stack(losses).mean(), "train_error": torch.stack(errors).mean()}

    def _grads(self, net: nn.Module) -> torch.Tensor:
        return torch.cat([p.grad.reshape(-1) for p in net.parameters()])  # (P,)

    def _group_nets(self) -> list[tuple[int, nn.Module]]:
        """(local index, net) of the agents the group still counts as hosted here, in its order."""
        out = []
        for r in self.group.local_ranks:
            i = self.ranks.index(r)
            if not bool(self.alive[i]):  # simulation: a local agent died and the group has not noticed yet
                raise CollectiveError(f"agent {r} died (simulated)")
            out.append((i, self.nets[i]))
        return out

    def _collective(self, step: int, op: str, make: Callable[[], list[torch.Tensor]]):
        """Run a collective on the tensors `make()` builds; on failure regroup and retry once.

        Returns the results, or None when the community broke up (then this process goes on alone).
        """
        for attempt in (0, 1):
            try:
                tensors = make()
                fn = self.group.all_reduce_mean if op == "all_reduce" else self.group.all_gather
                return fn(tensors)
            except CollectiveError as err:
                if attempt == 1 or not self._recover(step, err):
                    return None
        return None

    def _average_gradients(self, step: int) -> None:
        """Weight sharing: every agent's gradient replaced by the community's mean (all-reduce of P floats)."""
        holder: list = []

        def make():
            holder[:] = self._group_nets()
            return [self._grads(net) for _, net in holder]

        means = self._collective(step, "all_reduce", make)
        if means is None:
            return
        for (_, net), flat in zip(holder, means):
            offset = 0
            for p in net.parameters():
                p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()

    @torch.no_grad()
    def _exchange(self, exchange: int, step: int) -> None:
        """All-gather every agent's logits (E, C) on the same E transfer inputs; targets = mean of the others."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + exchange)  # same batch in every process
        idx = torch.randperm(len(self.transfer_x), generator=g)[: self.cfg.transfer_batch].to(self.device_)
        xt = self.transfer_x[idx]  # (E, D)
        holder: list = []

        cache: dict[int, torch.Tensor] = {}  # a retry after regrouping reuses the measured logits

        def make():
            holder[:] = self._group_nets()
            for i, _ in holder:
                if i not in cache:
                    cache[i] = self._forward(i, xt)  # (E, C)
            return [cache[i] for i, _ in holder]

        gathered = self._collective(step, "all_gather", make)  # per local agent: (N_alive, E, C)
        if gathered is None:
            return
        t, members = self.cfg.temperature, self.group.members
        for (i, _), g_i in zip(holder, gathered):
            others = [j for j, m in enumerate(members) if m != self.ranks[i]]
            if not others:  # the last one alive has nobody to learn from
                self.have_targets.fill_(False)
                return
            self.targets[i] = torch.softmax(g_i[others] / t, dim=2).mean(0)  # (E, C)
        self.transfer_idx.copy_(idx)
        self.have_targets.fill_(True)

    def _recover(self, step: int, err: CollectiveError) -> bool:
        """A collective failed: regroup with the survivors if possible (True), else go on alone (False)."""
        self.events.append({"step": step, "event": "collective failed", "error": str(err)})
        try:
            ok = self.group.regroup()
        except CollectiveError as err2:
            ok = False
            self.events.append({"step": step, "event": "regroup failed", "error": str(err2)})
        if ok:
            self.events.append({"step": step, "event": "regrouped", "members": list(self.group.members)})
            print(f"mortalnet community: agents {self.group.local_ranks} at step {step}: {err}; "
                  f"regrouped with the survivors {self.group.members}", file=sys.stderr, flush=True)
            return True
        self.exchanging.fill_(False)
        self.have_targets.fill_(False)
        self.events.append({"step": step, "event": "continuing alone"})
        print(f"mortalnet community: agents {self.ranks} at step {step}: {err}; continuing without exchanges",
              file=sys.stderr, flush=True)
        return False

    def _die(self, rank: int, step: int) -> None:
        i = self.ranks.index(rank)
        self.events.append({"step": step, "event": f"agent {rank} died"})
        if self.before_death is not None:
            self.before_death(rank, step)
        self.alive[i] = False
        self._on_death(i)
        self.group.kill(rank)  # a real process does not return from this

    # -- testing -------------------------------------------------------------------------------
    def agent_isolated(self, i: int) -> AbstractContextManager:
        """Where local agent i's test passes run: digital agents have nothing to isolate."""
        return nullcontext()

    @torch.no_grad()
    def evaluate_logits(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Local agent i's logits (B, C) for a test, inside `agent_isolated(i)`: on a device the noise
        stream and counters are put back, so how often a community is tested never changes how it
        trains (the exchanges' passes, `_forward` in train_batch, are training and use the device)."""
        with self.agent_isolated(i):
            return self.predict_batches(lambda xb: self._forward(i, xb), x)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Mean error of the living local agents, and each one's."""
        out = {}
        for i, r in enumerate(self.ranks):
            if bool(self.alive[i]):
                out[f"error_agent{r}"] = (self.evaluate_logits(i, x).argmax(1) != y).float().mean().item()
        out["error"] = float(np.mean(list(out.values()))) if out else float("nan")
        return out


class MortalCommunityLearner(CommunityLearner):
    """Agents on their own simulated analog devices (one instance each), trained by activity
    perturbation (`DeviceStudent`); they share only predictions (codistillation), never weights."""

    MODES = ("mortal", "mortal-alone")

    def _build_agent(self, rank: int) -> tuple[nn.Module, torch.optim.Optimizer]:
        cfg = replace(self.cfg.device, hardware_seed=self.seed * 1000 + rank + 1)  # its own physical instance
        agent = DeviceStudent(cfg, hidden=tuple(self.cfg.hidden), input_dim=self.input_dim,
                              num_classes=self.num_classes, seed=self.seed * 7919 + 1 + rank, device=self.device_)
        return agent, agent.optimizers[0]

    def _forward(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.nets[i].logits(x)  # measured outputs of its device (noisy on mild/harsh)

    def agent_isolated(self, i: int) -> AbstractContextManager:
        """Agent i's device passes for a test: its student's `isolated()` (`Device.isolated`)."""
        return self.nets[i].isolated()

    def _agent_update(self, i, x, y, soft):
        m = self.nets[i].train_mixed((x, y), soft, self.cfg.temperature, soft_weight=self.cfg.distill_weight,
                                     hard_weight=1.0)  # estimate by forward passes, then request the writes
        return m["loss"], m["train_error"]

    def _apply_updates(self) -> None:  # train_mixed already wrote to the devices
        pass

    def _on_death(self, i: int) -> None:
        self.nets[i].hardware.kill("its agent died")

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.nets[0].mirror.parameters())


def make_shards(labels: np.ndarray, n_agents: int, scheme: str, pool_size: int, seed: int,
                num_classes: int = 10) -> tuple[list[np.ndarray], np.ndarray]:
    """Split training indices into a shared unlabeled transfer pool and N equal labeled shards.

    Args:
        labels: (n,) training labels.
        scheme: iid (a random N-way split) | by-class (agent r gets the classes c with c mod N = r).
        pool_size: examples set aside as the shared transfer pool (their labels are never used).
    Returns:
        (shards: N index arrays of equal length, pool: index array).
    """
    n = len(labels)
    if pool_size >= n:
        raise ValueError(f"transfer pool of {pool_size} leaves nothing to shard out of {n} examples")
    perm = np.random.default_rng(seed).permutation(n)
    pool, rest = perm[:pool_size], perm[pool_size:]
    if scheme == "iid":
        per = len(rest) // n_agents
        shards = [rest[r * per : (r + 1) * per] for r in range(n_agents)]
    elif scheme == "by-class":
        if n_agents > num_classes:
            raise ValueError(f"by-class shards need at most {num_classes} agents, got {n_agents}")
        shards = [rest[np.isin(labels[rest], [c for c in range(num_classes) if c % n_agents == r])]
                  for r in range(n_agents)]
        per = min(len(s) for s in shards)
        shards = [s[:per] for s in shards]
    else:
        raise ValueError(f"unknown shard scheme {scheme!r}; valid: iid, by-class")
    if per == 0:
        raise ValueError(f"{n_agents} agents leave empty shards of {len(rest)} examples")
    return shards, pool


@dataclass(frozen=True)
class CommunityConfig:
    """A community of agents on MNIST: who shares what, how often, over which processes."""

    data: MnistConfig = field(default_factory=MnistConfig)
    """MNIST; the 50k training set is split into the transfer pool and the agents' shards."""
    agent: AgentConfig = field(default_factory=AgentConfig)
    """Each agent's network, optimizer and exchange settings."""
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(
        epochs=20, schedule="cosine", progress=False, tensorboard=False))
    """Epochs over each agent's shard (all agents in lockstep), batch size, schedule."""
    modes: tuple[Mode, ...] = ("codistill", "digital", "alone")
    """Which ways of sharing to run: digital, codistill, alone (digital nets); mortal, mortal-alone (device agents)."""
    agents: tuple[int, ...] = (2, 4, 8)
    """Community sizes N to run for each mode."""
    shards: Literal["iid", "by-class"] = "iid"
    """iid: random equal shards; by-class: agent r has only the classes c with c mod N = r."""
    transfer_pool: int = 10000
    """Training images set aside, unlabeled, as the shared pool of transfer inputs."""
    launcher: Literal["sim", "spawn", "torchrun"] = "spawn"
    """sim: all agents in this process; spawn: one process per agent (env:// rendezvous); torchrun: launched by torchrun."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend; auto = nccl on a GPU, gloo on CPU."""
    collective_timeout: float = 900.0
    """Seconds a collective may wait for a stalled peer before it fails (a killed peer is noticed at once,
    by its closed connection); generous by default because a shared machine may pause processes."""
    run_timeout: float = 14400.0
    """Seconds one community (one mode and N) may run before its processes are killed."""
    kill_rank: int = -1
    """Fault injection: the agent that dies (its process is killed with SIGKILL); -1 = nobody dies."""
    kill_step: int = -1
    """Fault injection: the training step (from 0) before which that agent dies."""

    def __post_init__(self) -> None:
        if not self.modes:
            raise ConfigError(f"modes needs at least one of {', '.join(MODES)}")
        if not self.agents or min(self.agents) < 1:
            raise ConfigError(f"agents needs at least one community size, each >= 1, got {self.agents}")
        if self.shards == "by-class" and max(self.agents) > 10:
            raise ConfigError(f"shards=by-class gives each agent at least one of the 10 classes: agents must be "
                              f"<= 10, got {max(self.agents)}")
        if not 1 <= self.agent.transfer_batch <= self.transfer_pool:
            raise ConfigError(f"agent.transfer_batch ({self.agent.transfer_batch}) must be between 1 and "
                              f"transfer_pool ({self.transfer_pool}): each exchange draws it from the pool")
        if self.collective_timeout <= 0 or self.run_timeout <= 0:
            raise ConfigError(f"collective_timeout and run_timeout must be > 0 (seconds), got "
                              f"{self.collective_timeout} and {self.run_timeout}")


def community_tensors(config: CommunityConfig, n_agents: int, ranks: list[int], seed: int,
                      device: torch.device) -> dict[str, Any]:
    """The data of the agents `ranks`: x (m, L, D), y (m, L), the transfer pool, the test set."""
    data = load_mnist(config.data)
    shards, pool = make_shards(data.train.labels, n_agents, config.shards, config.transfer_pool, seed)
    x_all, y_all = data.train.tensors(device)
    idx = torch.from_numpy(np.stack([shards[r] for r in ranks], 1)).to(device)  # (m, L)
    x_test, y_test = data.test.tensors(device)
    return {
        "x": x_all[idx], "y": y_all[idx], "transfer_x": x_all[torch.from_numpy(pool).to(device)],
        "x_test": x_test, "y_test": y_test,
        "shard_classes": {r: sorted(int(c) for c in np.unique(data.train.labels[shards[r]])) for r in ranks},
        "data_source": data.source,
    }


def train_community(config: CommunityConfig, mode: str, n_agents: int, group: Group, seed: int,
                    device: torch.device, write: Callable[[int, dict], None] | None = None,
                    learner_factory: Callable[..., Learner] | None = None) -> dict[int, dict]:
    """Train the agents of this process with the shared loop; return (and `write`) one record per agent.

    A record holds the agent's test error, per-class test errors and bytes sent/received after
    every epoch (and at step 0), its status (done | killed) and the group's events.
    """
    ranks = list(group.local_ranks)
    d = community_tensors(config, n_agents, ranks, seed, device)
    records: dict[int, dict] = {
        r: {"rank": r, "mode": mode, "n_agents": n_agents, "status": "running", "history": [],
            "shard_size": int(d["x"].shape[0]), "shard_classes": d["shard_classes"][r],
            "data_source": d["data_source"]}
        for r in ranks
    }
    emit = write or (lambda r, rec: None)

    def before_death(rank: int, step: int) -> None:
        records[rank].update(status="killed", died_at_step=step)
        if records[rank]["history"]:
            records[rank]["final"] = records[rank]["history"][-1]  # what it knew when it died
        emit(rank, records[rank])

    factory = learner_factory or (MortalCommunityLearner if mode.startswith("mortal") else CommunityLearner)
    learner = factory(config.agent, mode, group, d["transfer_x"], seed, device, kill_rank=config.kill_rank,
                      kill_step=config.kill_step, before_death=before_death)
    n_test = len(d["y_test"])
    counts = torch.bincount(d["y_test"], minlength=learner.num_classes).clamp_min(1)

    def snapshot(epoch: int) -> None:
        for i, r in enumerate(ranks):
            if not bool(learner.alive[i]):
                continue
            wrong = learner.evaluate_logits(i, d["x_test"]).argmax(1) != d["y_test"]
            per_class = torch.bincount(d["y_test"][wrong], minlength=learner.num_classes) / counts
            row = {"epoch": epoch, "step": int(learner.steps), "test_error": wrong.sum().item() / n_test,
                   "test_error_per_class": [round(v, 6) for v in per_class.tolist()],
                   **group.counters[r].as_dict()}
            records[r]["history"].append(row)
            emit(r, records[r])

    snapshot(0)
    fit(learner, (d["x"], d["y"]), None, config.training, seed, on_epoch=lambda e, row: snapshot(e))
    for i, r in enumerate(ranks):
        rec = records[r]
        if bool(learner.alive[i]):
            rec["status"] = "done"
        rec["final"] = rec["history"][-1]
        rec["events"] = list(learner.events)
        rec["n_params"] = learner.n_params
        rec["exchange_ok"] = bool(learner.exchanging)
        emit(r, rec)
    return records
