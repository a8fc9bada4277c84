"""community: N agents with their own MNIST shards share what they learn, or do not.

The talk's comparison of digital and mortal communities (MISSION.md sec. 1.3; Anil et al. 2018 for
codistillation), as real processes over torch.distributed (gloo on CPU, NCCL on GPU) or as a
single-process simulation. For each mode and community size N it records every agent's test error
after every epoch next to the exact number of bits it has sent and received so far; the summary
gives test error vs bits exchanged, and the bits per exchange: P weights (digital) vs E examples x
C classes (codistillation). With fault injection (`kill_rank`, `kill_step`) one agent's process is
killed mid-run: the survivors regroup and finish, and with class-wise shards we measure how much of
what only the dead agent knew (its classes) survives in the others.

A run is resumable community by community: each finished (mode, N) leaves `community.json` in its
directory, and `mortalnet run --resume DIR` runs only the ones that are missing. A community in
which no agent finished ends the run with an error (and leaves no `community.json`); the data and
the split into shards are checked before the first agent starts.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mortalnet.config import ConfigError
from mortalnet.data.mnist import DataError, MnistConfig, load_mnist
from mortalnet.experiments import register_experiment
from mortalnet.experiments.base import Experiment, RunContext, building
from mortalnet.report import plots
from mortalnet.runs import RunError, atomic_write_json, read_json
from mortalnet.training import TrainingConfig
from mortalnet.transfer.collectives import SimulatedGroup
from mortalnet.transfer.community import (
    AgentConfig,
    CommunityConfig,
    CommunityLearner,
    MortalCommunityLearner,
    make_shards,
)
from mortalnet.transfer.distill import FLOAT_BITS
from mortalnet.transfer.launch import launch, simulate
from mortalnet.transfer.stages import SessionClock


ALL_MODES = ("codistill", "digital", "alone", "mortal", "mortal-alone")


def _fast() -> CommunityConfig:
    return CommunityConfig(
        data=MnistConfig(train_subset=6000, test_subset=2000),
        agent=AgentConfig(hidden=(64,), exchange_every=5, transfer_batch=50, burn_in_steps=25),
        training=TrainingConfig(epochs=2, schedule="cosine", progress=False, tensorboard=False),
        agents=(2, 3), transfer_pool=1000, launcher="sim", modes=ALL_MODES,
    )


def _paper() -> CommunityConfig:
    return CommunityConfig(agents=(2, 4, 8), launcher="spawn", modes=ALL_MODES)


def _death() -> CommunityConfig:
    # 4 agents, agent r holding only the digits c with c mod 4 = r (7884 images each, 79 steps per
    # epoch); agent 1 (digits 1, 5, 9) is killed at step 1200 of 1580 (epoch 16 of 20).
    return CommunityConfig(agents=(4,), shards="by-class", launcher="spawn", kill_rank=1, kill_step=1200,
                           modes=ALL_MODES)


def _total_ratio(summaries: list[dict], n: int) -> float | None:
    """Bits sent per agent over a whole run by weight sharing over those sent by codistillation, at
    community size n (means over the seeds); None when either mode is missing."""
    sent = {mode: [c["bits_sent_per_agent"] for s in summaries for c in s["communities"]
                   if c["mode"] == mode and c["n_agents"] == n] for mode in ("digital", "codistill")}
    if not all(sent.values()) or not np.mean(sent["codistill"]):
        return None
    return float(np.mean(sent["digital"]) / np.mean(sent["codistill"]))


@register_experiment("community")
class Community(Experiment):
    name = "community"
    description = "N agents on MNIST shards: gradient averaging (digital) vs exchanging predictions (codistill) vs alone; bits exchanged, agent death"
    Config = CommunityConfig
    presets = {"fast": _fast, "paper": _paper, "death": _death}
    references = {}

    def check(self, config: CommunityConfig, ctx: RunContext) -> None:
        """One agent of each mode built in this process, before the first community trains: a setting only
        the mortal agents use (agent.device) is refused before the digital communities have trained. The
        agents' nets do not depend on N; the class per mode is the one `train_community` picks."""
        pool = torch.zeros(config.agent.transfer_batch, 784, device=ctx.device)  # stands in for the transfer inputs
        for mode in config.modes:
            agents = MortalCommunityLearner if mode.startswith("mortal") else CommunityLearner
            with building(f"a {mode} agent"):
                agents(config.agent, mode, SimulatedGroup(1), pool, ctx.seed, ctx.device)

    def run(self, config: CommunityConfig, ctx: RunContext) -> dict[str, Any]:
        check_community(config, ctx.seed, ctx.device)
        root = ctx.run.path / "agents" if ctx.run is not None else Path(tempfile.mkdtemp(prefix="community-"))
        communities = []
        clock = SessionClock()  # wall time across the sessions of a resumed run
        for n in config.agents:
            for mode in config.modes:
                out = root / f"{mode}-N{n}"
                if (out / "community.json").exists():  # finished before this run was resumed
                    communities.append(read_json(out / "community.json"))
                    clock.add_earlier(communities[-1].get("wall_seconds", 0.0))
                    continue
                t_start = time.perf_counter()
                if config.launcher == "sim":
                    records = simulate(config, mode, n, ctx.seed, ctx.device)
                    for rec in records:
                        atomic_write_json(out / f"agent{rec['rank']}.json", rec)
                else:
                    records = launch(config, mode, n, ctx.seed, out, ctx.device)
                try:
                    communities.append(summarize(config, mode, n, records))
                except DataError as err:
                    if communities:  # keep the communities that finished: a failed run, resumable
                        raise RunError(f"community {mode} N={n}: {err}") from None
                    shutil.rmtree(out, ignore_errors=True)  # nothing trained: leave no run behind
                    if root.is_dir() and not any(root.iterdir()):
                        root.rmdir()
                    raise
                communities[-1]["wall_seconds"] = time.perf_counter() - t_start
                atomic_write_json(out / "community.json", communities[-1])
                c = communities[-1]
                lost = {r: s for r, s in c["statuses"].items() if s not in ("done", "killed")}
                if lost:  # not the fault injection's death: say so even with --quiet
                    who = ", ".join(f"{r} {s}" for r, s in lost.items())
                    print(f"mortalnet community {mode} N={n}: agent{'s' * (len(lost) > 1)} {who}; the test error "
                          f"is the mean over the {c['finished']} of {n} that finished (records in {out})",
                          file=sys.stderr, flush=True)
                if ctx.progress:
                    print(f"community {mode:9s} N={n}: test error {c['test_error_mean']:.2%}  "
                          f"bits sent/agent {c['bits_sent_per_agent']:.3g}  statuses {c['statuses']}", flush=True)
        head = communities[[c["n_agents"] for c in communities].index(max(config.agents))]
        out: dict[str, Any] = {
            "test_error": head["test_error_mean"],
            "primary_metric": f"{head['mode']}_N{head['n_agents']}",
            "communities": communities,
            "launcher": config.launcher,
            "shards": config.shards,
            "n_params_per_agent": communities[0]["n_params"],
            "transfer_batch": config.agent.transfer_batch,
            "exchange_every": config.agent.exchange_every,
            "wall_seconds": clock.total(),  # all sessions of the run (finished communities are kept)
        }
        for c in communities:
            out[f"test/{c['mode']}_N{c['n_agents']}"] = c["test_error_mean"]
        out["plots"] = self._plots(config, ctx, communities) if ctx.run is not None else []
        return out

    def _plots(self, config: CommunityConfig, ctx: RunContext, communities: list[dict]) -> list[str]:
        d = ctx.run.plots
        names = []
        curves, flat, styles = {}, {}, {}
        modes = list(dict.fromkeys(c["mode"] for c in communities))
        sizes = list(dict.fromkeys(c["n_agents"] for c in communities))
        for c in communities:
            label = f"{c['mode']} N={c['n_agents']}"
            style = {"color": f"C{modes.index(c['mode']) % 10}",
                     "marker": "os^vD*"[sizes.index(c["n_agents"]) % 6],
                     "ls": ["-", "--", ":", "-."][sizes.index(c["n_agents"]) % 4]}
            styles[label] = style
            pts = [(b, e) for b, e in zip(c["curve_bits_sent"], c["curve_test_error"]) if b > 0]
            if pts:
                curves[label] = tuple(zip(*pts))
            else:
                flat[label + " (no bits)"] = c["test_error_mean"]
                styles[label + " (no bits)"] = {"color": style["color"], "ls": style["ls"]}
        names.append(plots.xy_curves(curves, d / "error_vs_bits.png", "bits sent per agent (cumulative)",
                                     "test error (mean over agents)", "test error vs bits exchanged (color: mode, "
                                     "line: N)", logx=True, logy=True, hlines=flat, styles=styles))
        by_epoch = {f"{c['mode']} N={c['n_agents']}": (c["curve_epoch"], c["curve_test_error"]) for c in communities}
        names.append(plots.xy_curves(by_epoch, d / "error_vs_epoch.png", "epoch", "test error (mean over agents)",
                                     "test error over training", logy=True,
                                     styles={k: {**v, "marker": None} for k, v in styles.items()}))
        dead = [c for c in communities if c.get("survival")]
        if dead:
            surv = {f"{c['mode']} N={c['n_agents']}": (c["survival"]["curve_step"], c["survival"]["curve_error"])
                    for c in dead}
            names.append(plots.xy_curves(
                surv, d / "survival.png", "training step",
                "survivors' test error on the dead agent's digits",
                f"what only agent {config.kill_rank} knew, after it died", vlines={"death": config.kill_step}))
        return names

    def report_section(self, summaries: list[dict]) -> str:
        runs = [s for s in summaries if s.get("communities")]
        if not runs:
            return ""
        lines = ["### community: test error vs bits exchanged", ""]
        for preset in dict.fromkeys(s["preset"] for s in runs):
            rs = sorted((s for s in runs if s["preset"] == preset), key=lambda s: s["seed"])
            first = rs[0]
            lines.append(f"Preset `{preset}` ({first['launcher']} launcher, {first['shards']} shards, "
                         f"seeds {', '.join(str(s['seed']) for s in rs)}; {first['n_params_per_agent']:,} weights "
                         f"per agent; codistillation exchanges E = {first['transfer_batch']} examples every "
                         f"{first['exchange_every']} steps). Test error: mean over the agents of a run, then mean ± sd "
                         "over seeds; bits per agent (sent / received), from the counts at the collective calls.")
            lines += ["", "| mode | N | test error | exchanges per agent | bits sent per exchange | bits sent per agent "
                      "| bits received per agent | agents finished |", "|---|---|---|---|---|---|---|---|"]
            keys = list(dict.fromkeys((c["mode"], c["n_agents"]) for s in rs for c in s["communities"]))
            keys.sort(key=lambda k: (k[1], k[0]))
            per_exchange = {}
            for mode, n in keys:
                cs = [c for s in rs for c in s["communities"] if c["mode"] == mode and c["n_agents"] == n]
                errs = np.array([c["test_error_mean"] for c in cs])
                err = f"{errs.mean():.2%}" + (f" ± {errs.std(ddof=1) * 100:.2f}" if len(errs) > 1 else "")
                bpe = cs[0]["bits_sent_per_exchange"]
                if bpe:
                    per_exchange.setdefault(mode, bpe)
                fin = ", ".join(f"{c['finished']}/{c['n_agents']}" for c in cs)
                lines.append(f"| {mode} | {n} | {err} | {cs[0]['exchanges_per_agent']:g} | {bpe:,.0f} | "
                             f"{np.mean([c['bits_sent_per_agent'] for c in cs]):.3g} | "
                             f"{np.mean([c['bits_received_per_agent'] for c in cs]):.3g} | {fin} |")
            if "digital" in per_exchange and "codistill" in per_exchange:
                d, c = per_exchange["digital"], per_exchange["codistill"]
                lines += ["", f"Bits per exchange: weight sharing sends {d:,.0f} bits (all {d / FLOAT_BITS:,.0f} "
                          f"weights, float32); distillation sends {c:,.0f} bits ({c / FLOAT_BITS:,.0f} logits = "
                          f"examples x classes): a ratio of {d / c:,.0f} to 1 per exchange."]
                totals = {n: _total_ratio(rs, n) for n in sorted({n for _, n in keys})}
                totals = {n: r for n, r in totals.items() if r}
                if totals:
                    lines[-1] += (" Over a whole run, where weight sharing exchanges every step and codistillation "
                                  "every k-th after its burn-in, weight sharing sent " +
                                  ", ".join(f"{r:,.0f}x (N = {n})" for n, r in totals.items()) +
                                  " the bits per agent.")
            dead = [c for s in rs for c in s["communities"] if c.get("survival")]
            if dead:
                lines += ["", "Agent death: survivors' test error on the digits only the dead agent had "
                          "(before its death, at the end), and the dead agent's own error when it died:", "",
                          "| mode | N | dead agent (its digits) | survivors before | survivors at end | dead agent's error at death |",
                          "|---|---|---|---|---|---|"]
                for c in dead:
                    sv = c["survival"]
                    lines.append(f"| {c['mode']} | {c['n_agents']} | {sv['dead_rank']} ({', '.join(map(str, sv['classes']))}) "
                                 f"| {sv['error_before']:.1%} | {sv['error_end']:.1%} | {sv['dead_error']:.1%} |")
            lines.append("")
        return "\n".join(lines)


def check_community(config: CommunityConfig, seed: int, device: torch.device) -> None:
    """Refuse before any agent starts what would fail inside every agent: unreadable data (DataError),
    a community size or transfer pool that the training set cannot be split into, NCCL without a GPU
    (ConfigError)."""
    if config.backend == "nccl" and device.type != "cuda":
        raise ConfigError(f"backend=nccl needs CUDA agents (--device cuda); this run's device is {device.type}")
    labels = load_mnist(config.data).train.labels
    for n in config.agents:
        try:
            make_shards(labels, n, config.shards, config.transfer_pool, seed)
        except ValueError as err:
            raise ConfigError(f"agents={n}, shards={config.shards}, transfer_pool={config.transfer_pool} "
                              f"with {len(labels)} training images: {err}") from None


def _fate(rec: dict) -> str:
    """Why an agent did not finish, in a few words: its error, else the last line of its log."""
    if rec.get("error"):
        return rec["error"]
    tail = [line for line in rec.get("log_tail", "").splitlines() if line.strip()]
    return tail[-1].strip() if tail else f"exit code {rec.get('exit_code')}"


def summarize(config: CommunityConfig, mode: str, n: int, records: list[dict]) -> dict[str, Any]:
    """One community's numbers from its agents' records (all of them JSON-able).

    Test errors, bits and curves are means over the agents that finished (status done); `finished`
    counts them and `statuses` names what happened to the others (killed by fault injection,
    failed, missing, ...). If none finished there are no numbers: DataError when every agent
    failed on the data (its message), else RunError naming each agent's error.
    """
    living = [r for r in records if r.get("status") == "done"]
    if not living:
        errors = [r.get("error", "") for r in records]
        if errors and all(e.startswith("DataError: ") for e in errors):
            raise DataError(errors[0].removeprefix("DataError: "))
        fates: dict[tuple[str, str], list[str]] = {}  # (status, why) -> ranks
        for r in records:
            fates.setdefault((str(r.get("status")), _fate(r)), []).append(str(r["rank"]))
        raise RunError(f"community {mode} N={n}: no agent finished: " + "; ".join(
            f"agent{'s' * (len(ranks) > 1)} {', '.join(ranks)} {status} ({why})"
            for (status, why), ranks in fates.items()))
    finals = [r["final"]["test_error"] for r in living]
    statuses = {str(r["rank"]): r.get("status") for r in records}
    out: dict[str, Any] = {"mode": mode, "n_agents": n, "statuses": statuses, "finished": len(living),
                           "test_error_per_agent": {str(r["rank"]): r["final"]["test_error"] for r in living},
                           "test_error_mean": float(np.mean(finals))}
    sent = [8 * r["final"]["bytes_sent"] for r in living]
    calls = [sum(r["final"]["calls"].values()) for r in living]
    out["bits_sent_per_agent"] = float(np.mean(sent))
    out["bits_received_per_agent"] = float(np.mean([8 * r["final"]["bytes_received"] for r in living]))
    out["wire_bits_sent_per_agent"] = float(np.mean([8 * r["final"]["wire_bytes_sent"] for r in living]))
    out["exchanges_per_agent"] = float(np.mean(calls))
    out["bits_sent_per_exchange"] = float(sent[0] / calls[0]) if calls[0] else 0.0
    out["n_params"] = living[0].get("n_params", 0)
    out["steps"] = living[0]["final"]["step"]
    epochs = min(len(r["history"]) for r in living)
    out["curve_epoch"] = [living[0]["history"][e]["epoch"] for e in range(epochs)]
    out["curve_bits_sent"] = [float(np.mean([8 * r["history"][e]["bytes_sent"] for r in living])) for e in range(epochs)]
    out["curve_test_error"] = [float(np.mean([r["history"][e]["test_error"] for r in living])) for e in range(epochs)]
    out["events"] = sorted({e["event"] for r in living for e in r.get("events", [])})
    dead = [r for r in records if r.get("status") == "killed"]
    if dead and config.shards == "by-class":
        out["survival"] = _survival(dead[0], living)
    return out


def _survival(dead: dict, living: list[dict]) -> dict[str, Any]:
    """Survivors' error on the classes that only the dead agent had in its shard, over time."""
    others = {c for r in living for c in r["shard_classes"]}
    classes = [c for c in dead["shard_classes"] if c not in others]
    step_of_death = dead.get("died_at_step", 0)

    def err(row):
        return float(np.mean([row["test_error_per_class"][c] for c in classes]))

    steps = [row["step"] for row in living[0]["history"]]
    curve = [float(np.mean([err(r["history"][e]) for r in living])) for e in range(len(steps))]
    before = [e for e, s in enumerate(steps) if s <= step_of_death]
    return {"dead_rank": dead["rank"], "classes": classes, "died_at_step": step_of_death,
            "curve_step": steps, "curve_error": curve,
            "error_before": curve[before[-1]] if before else float("nan"), "error_end": curve[-1],
            "dead_error": dead["final"]["test_error"] if dead.get("final") else float("nan")}
