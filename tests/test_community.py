"""Community of agents: exact byte counts, determinism, agent death in one process and in real ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mortalnet.data.mnist import DataError, MnistConfig
from mortalnet.experiments.community import summarize
from mortalnet.runs import RunError
from mortalnet.training import TrainingConfig
from mortalnet.transfer.collectives import CollectiveError, SimulatedGroup, payload_bytes, wire_bytes
from mortalnet.transfer.community import AgentConfig, CommunityConfig, CommunityLearner, make_shards
from mortalnet.transfer.launch import launch, simulate

from conftest import assert_refused, needs_mnist

SRC = str(Path(__file__).resolve().parents[1] / "src")
HIDDEN = 8
P = 784 * HIDDEN + HIDDEN + HIDDEN * 10 + 10  # weights + biases of a 784-8-10 agent: 6370


def tiny(**kw) -> CommunityConfig:
    """Synthetic data: 2000 training images -> pool 400 + shards; 50 per batch."""
    base = dict(data=MnistConfig(source="synthetic"),
                agent=AgentConfig(hidden=(HIDDEN,), exchange_every=5, transfer_batch=20, burn_in_steps=0),
                training=TrainingConfig(epochs=2, batch_size=50, schedule="constant", progress=False, tensorboard=False),
                transfer_pool=400, collective_timeout=5.0, run_timeout=90.0)
    base.update(kw)
    return CommunityConfig(**base)


def test_payload_and_ring_byte_formulas():
    assert payload_bytes("all_reduce", 400, 4) == (400, 400)
    assert payload_bytes("all_gather", 400, 4) == (400, 1200)
    assert wire_bytes("all_reduce", 400, 4) == 600.0 and wire_bytes("all_gather", 400, 4) == 1200.0
    with pytest.raises(ValueError, match="unknown collective"):
        payload_bytes("broadcast", 4, 2)


def test_byte_counts_equal_hand_computed_counts():
    n = 3
    shard = (2000 - 400) // n  # 533 images -> 11 steps per epoch of 50, 22 steps in 2 epochs
    steps = 2 * int(np.ceil(shard / 50))
    digital = simulate(tiny(), "digital", n, seed=0)
    for rec in digital:
        assert rec["n_params"] == P
        assert rec["final"]["step"] == steps
        assert rec["final"]["bytes_sent"] == steps * P * 4 == rec["final"]["bytes_received"]
        assert rec["final"]["calls"] == {"all_reduce": steps}
    codistill = simulate(tiny(), "codistill", n, seed=0)
    exchanges = len(range(0, steps, 5))  # every 5 steps from step 0 (no burn-in)
    for rec in codistill:
        assert rec["final"]["bytes_sent"] == exchanges * 20 * 10 * 4  # E x C float32 logits each time
        assert rec["final"]["bytes_received"] == exchanges * 20 * 10 * 4 * (n - 1)
    for rec in simulate(tiny(), "alone", n, seed=0):
        assert rec["final"]["bytes_sent"] == 0 == rec["final"]["bytes_received"]


def test_simulation_is_deterministic_and_digital_agents_stay_identical():
    a = simulate(tiny(), "codistill", 2, seed=3)
    b = simulate(tiny(), "codistill", 2, seed=3)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    c = simulate(tiny(), "codistill", 2, seed=4)
    assert json.dumps(a, sort_keys=True) != json.dumps(c, sort_keys=True)
    # gradient averaging from identical initial weights keeps the copies identical
    group = SimulatedGroup(3)
    learner = CommunityLearner(tiny().agent, "digital", group, torch.rand(40, 784), seed=0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        learner.train_batch(torch.rand(10, 3, 784, generator=gen), torch.randint(0, 10, (10, 3), generator=gen))
    for p0, p1, p2 in zip(*(net.parameters() for net in learner.nets)):
        assert torch.equal(p0, p1) and torch.equal(p0, p2)


def test_codistillation_targets_are_the_average_of_the_others():
    group = SimulatedGroup(3)
    cfg = AgentConfig(hidden=(HIDDEN,), exchange_every=2, transfer_batch=6, temperature=3.0, burn_in_steps=0)
    learner = CommunityLearner(cfg, "codistill", group, torch.rand(30, 784), seed=1)
    learner.train_batch(torch.rand(5, 3, 784), torch.randint(0, 10, (5, 3)))  # step 0 exchanges first
    xt = learner.transfer_x[learner.transfer_idx]
    # the nets have since taken one step; the targets came from the initial nets: rebuild those
    fresh = CommunityLearner(cfg, "codistill", SimulatedGroup(3), learner.transfer_x, seed=1)
    with torch.no_grad():
        probs = [torch.softmax(net.eval()(xt) / 3.0, 1) for net in fresh.nets]
    assert torch.allclose(learner.targets[0], (probs[1] + probs[2]) / 2, atol=1e-6)
    assert torch.allclose(learner.targets[2], (probs[0] + probs[1]) / 2, atol=1e-6)


def test_simulated_death_survivors_regroup_and_finish():
    recs = simulate(tiny(kill_rank=1, kill_step=10), "codistill", 3, seed=0)
    assert [r["status"] for r in recs] == ["done", "killed", "done"]
    assert recs[1]["died_at_step"] == 10 and recs[1]["final"]["step"] == 0
    survivor = recs[0]
    assert any(e["event"] == "regrouped" and e["members"] == [0, 2] for e in survivor["events"])
    # exchanges at steps 0 and 5 among 3 agents, then at 10, 15, 20 among 2
    assert survivor["final"]["bytes_sent"] == 5 * 800
    assert survivor["final"]["bytes_received"] == 2 * 2 * 800 + 3 * 800


def test_a_group_with_a_dead_member_refuses_collectives():
    group = SimulatedGroup(2)
    group.kill(1)
    with pytest.raises(CollectiveError, match=r"agent\(s\) \[1\] died"):
        group.all_gather([torch.zeros(2), torch.zeros(2)])
    assert group.regroup() and group.members == [0] and group.local_ranks == [0]


def test_make_shards_pool_and_class_shards():
    labels = np.random.default_rng(0).integers(0, 10, 3000)
    shards, pool = make_shards(labels, 4, "by-class", 500, seed=0)
    assert len({len(s) for s in shards}) == 1 and len(pool) == 500
    everything = np.concatenate([pool, *shards])
    assert len(np.unique(everything)) == len(everything)  # disjoint
    for r, s in enumerate(shards):
        assert set(np.unique(labels[s])) == {c for c in range(10) if c % 4 == r}
    with pytest.raises(ValueError, match="unknown shard scheme"):
        make_shards(labels, 2, "random", 10, 0)


def test_real_processes_match_the_simulation(tmp_path):
    """Two gloo processes compute what the simulation computes (same bytes, same errors)."""
    cfg = tiny()
    real = launch(cfg, "codistill", 2, 0, tmp_path / "c", launcher="spawn")
    sim = simulate(cfg, "codistill", 2, 0)
    for r, s in zip(real, sim):
        assert r["status"] == "done" and r["exit_code"] == 0
        assert r["final"]["bytes_sent"] == s["final"]["bytes_sent"]
        assert r["final"]["bytes_received"] == s["final"]["bytes_received"]
        assert abs(r["final"]["test_error"] - s["final"]["test_error"]) < 0.02


def test_a_killed_agent_process_does_not_hang_the_others(tmp_path):
    cfg = tiny(kill_rank=1, kill_step=10, collective_timeout=5.0, run_timeout=60.0)
    t0 = time.monotonic()
    recs = launch(cfg, "digital", 3, 0, tmp_path / "d", launcher="spawn")
    assert time.monotonic() - t0 < 55
    assert [r["status"] for r in recs] == ["done", "killed", "done"]
    assert recs[1]["exit_code"] == -9  # SIGKILL: the process really died
    for r in (recs[0], recs[2]):
        assert r["exit_code"] == 0 and r["final"]["step"] == 22
        assert r["final"]["bytes_sent"] == 22 * P * 4  # the failed all-reduce was redone among the survivors
        assert [e["event"] for e in r["events"]][:2] == ["collective failed", "regrouped"]
        assert (tmp_path / "d" / f"agent{r['rank']}.json").exists()


def test_a_stalled_peer_makes_the_collective_time_out(tmp_path):
    """A peer that is alive but never joins the collective: the other one fails within the timeout."""
    script = textwrap.dedent("""
        import os, sys, time, torch
        from mortalnet.transfer.collectives import DistributedGroup, CollectiveError
        g = DistributedGroup(timeout_s=3.0)
        if g.rank == 1:
            time.sleep(30)
        t0 = time.monotonic()
        try:
            g.all_reduce_mean([torch.ones(4)])
            print("NO ERROR")
        except CollectiveError as err:
            print(f"ERROR after {time.monotonic() - t0:.1f}s: {err}")
        sys.stdout.flush()
        os._exit(0)
    """)
    port = __import__("mortalnet.transfer.launch", fromlist=["_free_port"])._free_port()
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               WORLD_SIZE="2")
    procs = [subprocess.Popen([sys.executable, "-c", script], env=dict(env, RANK=str(r)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    try:
        out, _ = procs[0].communicate(timeout=25)
    finally:
        procs[1].kill()
        procs[1].wait()
    assert "ERROR after" in out and "all_reduce failed" in out, out
    assert float(out.split("ERROR after ")[1].split("s")[0]) < 10


def test_torchrun_launcher_runs_a_community(tmp_path):
    """torchrun agents train what the in-process simulation trains: every step, to the same test error."""
    recs = launch(tiny(), "alone", 2, 0, tmp_path / "t", launcher="torchrun")
    sim = simulate(tiny(), "alone", 2, 0)
    steps = 2 * int(np.ceil((2000 - 400) // 2 / 50))  # 2 epochs of an 800-image shard in batches of 50: 32
    assert [r["status"] for r in recs] == ["done", "done"]
    for r, s in zip(recs, sim):
        assert r["exit_code"] == 0
        assert r["final"]["step"] == steps == s["final"]["step"]
        assert r["final"]["bytes_sent"] == 0 == r["final"]["bytes_received"]
        # chance is 0.9; the simulation (seed 0) reaches 0.002 and 0.0 on synthetic digits, torchrun the same
        assert abs(r["final"]["test_error"] - s["final"]["test_error"]) < 0.02
        assert r["final"]["test_error"] < 0.1


@needs_mnist
def test_community_fast_preset_runs_and_reports(tmp_path):
    from mortalnet.api import run
    from mortalnet.experiments import get_experiment

    s = run("community", preset="fast", seed=0, out=tmp_path / "r", progress=False)
    by = {(c["mode"], c["n_agents"]): c for c in s["communities"]}
    assert set(by) == {(m, n) for m in ("codistill", "digital", "alone", "mortal", "mortal-alone") for n in (2, 3)}
    assert all(c["finished"] == c["n_agents"] for c in by.values())
    assert by[("digital", 3)]["test_error_mean"] < 0.3 and s["test_error"] < 0.4
    assert by[("alone", 3)]["bits_sent_per_agent"] == 0 == by[("mortal-alone", 3)]["bits_sent_per_agent"]
    assert by[("mortal", 2)]["bits_sent_per_exchange"] == 32 * 50 * 10
    assert by[("digital", 2)]["bits_sent_per_exchange"] == 32 * s["n_params_per_agent"]
    assert by[("codistill", 2)]["bits_sent_per_exchange"] == 32 * 50 * 10
    assert (tmp_path / "r" / "plots" / "error_vs_bits.png").exists()
    text = get_experiment("community").report_section([s])
    assert "a ratio of" in text and "| digital | 3 |" in text


def test_a_terminated_launcher_takes_its_agents_down(tmp_path):
    """SIGTERM to the launcher (e.g. a job's time limit) must not leave orphaned agent processes."""
    import signal

    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {SRC!r})
        from mortalnet.data.mnist import MnistConfig
        from mortalnet.training import TrainingConfig
        from mortalnet.transfer.community import AgentConfig, CommunityConfig
        from mortalnet.transfer.launch import launch
        cfg = CommunityConfig(data=MnistConfig(source="synthetic"), agent=AgentConfig(hidden=(8,), burn_in_steps=0,
                              transfer_batch=20, exchange_every=5), transfer_pool=400,
                              training=TrainingConfig(epochs=1000, batch_size=50, progress=False, tensorboard=False))
        launch(cfg, "codistill", 2, 0, {str(tmp_path / "t")!r}, launcher="spawn")
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], env=dict(os.environ, OMP_NUM_THREADS="1"))
    spec = str(tmp_path / "t" / "spec.json")
    deadline = time.monotonic() + 40
    while not (tmp_path / "t" / "agent1.json").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert (tmp_path / "t" / "agent1.json").exists(), "the agents never started"
    parent.send_signal(signal.SIGTERM)
    parent.wait(timeout=20)
    time.sleep(1)
    left = subprocess.run(["pgrep", "-f", spec], capture_output=True, text=True).stdout.split()
    assert not left, f"orphaned agent processes: {left}"


@needs_mnist
def test_a_resumed_community_run_skips_finished_communities(tmp_path):
    from mortalnet.api import run

    overrides = ["modes=alone,digital", "agents=2"]
    first = run("community", preset="fast", seed=0, out=tmp_path / "r", overrides=overrides, progress=False)
    (tmp_path / "r" / "summary.json").unlink()
    (tmp_path / "r" / "agents" / "digital-N2" / "community.json").unlink()
    kept = (tmp_path / "r" / "agents" / "alone-N2" / "agent0.json").stat().st_mtime_ns
    again = run("community", resume=tmp_path / "r", progress=False)
    assert (tmp_path / "r" / "agents" / "alone-N2" / "agent0.json").stat().st_mtime_ns == kept
    strip = lambda cs: [{k: v for k, v in c.items() if k != "wall_seconds"} for c in cs]  # noqa: E731
    assert strip(again["communities"]) == strip(first["communities"])
    assert again["wall_seconds"] >= first["communities"][0]["wall_seconds"]  # earlier sessions are counted


@pytest.mark.parametrize("overrides, message", [
    (["agents="], "agents needs at least one community size"),
    (["modes="], "modes needs at least one of"),
    (["agent.exchange_every=0"], "agent.exchange_every must be >= 1"),
    (["agents=12", "shards=by-class"], "agents must be <= 10, got 12"),
    (["agent.transfer_batch=2000"], "agent.transfer_batch (2000) must be between 1 and transfer_pool (1000)"),
    (["collective_timeout=0"], "collective_timeout and run_timeout must be > 0"),
    (["transfer_pool=2000", "agent.transfer_batch=50"], "transfer pool of 2000 leaves nothing to shard"),
    (["backend=nccl", "launcher=spawn"], "backend=nccl needs CUDA agents"),
])
def test_a_config_the_agents_cannot_run_is_refused_up_front(overrides, message, capsys, tmp_path):
    """Refused before any agent starts: one line, exit 2, no run directory (synthetic data: 2000 images)."""
    assert_refused(capsys, tmp_path / "r", "community", ["data.source=synthetic", *overrides], message)


def test_summary_is_over_the_finished_agents_and_none_finished_is_an_error():
    recs = simulate(tiny(), "alone", 2, seed=0)
    recs[1].update(status="failed", error="RuntimeError: boom")
    s = summarize(tiny(), "alone", 2, recs)
    assert s["finished"] == 1 and s["statuses"] == {"0": "done", "1": "failed"}
    assert s["test_error_mean"] == recs[0]["final"]["test_error"]
    recs[0].update(status="missing", exit_code=1, log_tail="Traceback ...\nMemoryError\n")
    with pytest.raises(RunError, match=r"no agent finished: agent 0 missing \(MemoryError\); agent 1 failed "
                                       r"\(RuntimeError: boom\)"):
        summarize(tiny(), "alone", 2, recs)
    for r in recs:
        r.update(status="failed", error="DataError: IDX directory /x does not exist")
    with pytest.raises(DataError, match="^IDX directory /x does not exist$"):
        summarize(tiny(), "alone", 2, recs)


def _run_community(tmp_path, *overrides):
    from mortalnet.api import run

    return run("community", preset="fast", seed=0, out=tmp_path / "r", device="cpu", progress=False,
               overrides=["data.source=synthetic", "agent.hidden=8", "training.epochs=1", *overrides])


def test_a_community_whose_only_agent_dies_fails_the_run(tmp_path):
    """Every agent of a community ended without finishing: an error, never a NaN test error, and no result."""
    with pytest.raises(RunError, match=r"community alone N=1: no agent finished: agent 0 killed \(exit code -9\)"):
        _run_community(tmp_path, "modes=alone", "agents=1", "launcher=spawn", "kill_rank=0", "kill_step=3")
    assert json.loads((tmp_path / "r" / "status.json").read_text())["state"] == "failed"
    assert not (tmp_path / "r" / "agents" / "alone-N1" / "community.json").exists()
    assert not (tmp_path / "r" / "summary.json").exists()


def test_agents_that_all_fail_on_the_data_give_a_data_error_and_leave_no_run(tmp_path, monkeypatch):
    """The agents read the data again; if every one of them fails on it, the run is refused as a DataError."""
    def agents_fail_on_the_data(config, mode, n, seed, out, device):
        for r in range(n):
            (out / f"agent{r}.log").parent.mkdir(parents=True, exist_ok=True)
            (out / f"agent{r}.log").write_text("DataError: IDX directory /gone does not exist\n")
        return [{"rank": r, "status": "failed", "history": [], "exit_code": 1,
                 "error": "DataError: IDX directory /gone does not exist"} for r in range(n)]

    monkeypatch.setattr("mortalnet.experiments.community.launch", agents_fail_on_the_data)
    with pytest.raises(DataError, match="IDX directory /gone does not exist"):
        _run_community(tmp_path, "modes=codistill", "agents=2", "launcher=spawn")
    assert not (tmp_path / "r").exists()


def test_an_agent_that_fails_while_the_others_finish_is_reported(tmp_path, monkeypatch, capsys):
    def one_agent_fails(config, mode, n, seed, out, device):
        recs = simulate(config, mode, n, seed)
        recs[1].update(status="failed", error="RuntimeError: boom")
        return recs

    monkeypatch.setattr("mortalnet.experiments.community.launch", one_agent_fails)
    s = _run_community(tmp_path, "modes=alone", "agents=2", "launcher=spawn")
    assert s["communities"][0]["finished"] == 1 and s["test_error"] == s["communities"][0]["test_error_per_agent"]["0"]
    assert "agent 1 failed; the test error is the mean over the 1 of 2 that finished" in capsys.readouterr().err
