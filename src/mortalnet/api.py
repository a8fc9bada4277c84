"""Running experiments: the code behind `mortalnet run` and `mortalnet eval`, usable from Python.

    import mortalnet as mn
    summary = mn.run("ff-supervised", preset="demo", seed=0)
    print(summary["test_error"])
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from mortalnet import config as cfgmod
from mortalnet.data.mnist import DataError
from mortalnet.experiments import get_experiment
from mortalnet.experiments.base import BUILD_REFUSALS, RunContext
from mortalnet.registry import UnknownNameError
from mortalnet.runs import (
    RunDir,
    RunError,
    check_summary,
    checkpoint_train_seconds,
    git_commit,
    machine_info,
    machine_label,
    new_run_dir,
    record_digest,
)


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is an error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec != "cpu" and not re.fullmatch(r"cuda(:\d+)?", spec):  # a bad option: ConfigError, exit 2
        raise cfgmod.ConfigError(f"unknown device {spec!r}; valid: auto, cpu, cuda, cuda:N")
    if spec.startswith("cuda") and not torch.cuda.is_available():  # this machine: RunError, exit 1
        raise RunError("--device cuda was asked for but torch sees no CUDA GPU (use --device auto or cpu)")
    return torch.device(spec)


def preset_config(experiment: str, preset: str, overrides: Iterable[str] = ()) -> Any:
    """The config of `experiment`'s `preset` with `key=value` overrides applied (validated)."""
    exp = get_experiment(experiment)
    if preset not in exp.presets:
        raise cfgmod.ConfigError(
            f"experiment {experiment!r} has no preset {preset!r}; valid: {', '.join(exp.presets)}"
        )
    return cfgmod.apply_overrides(exp.presets[preset](), overrides)


def run(
    experiment: str,
    preset: str | None = None,
    seed: int | None = None,
    overrides: Iterable[str] = (),
    out: str | Path | None = None,
    device: str = "auto",
    resume: str | Path | None = None,
    runs_root: str | Path = "runs",
    progress: bool = True,
) -> dict[str, Any]:
    """Run an experiment and write its record; returns the summary (also in <out>/summary.json).

    Args:
        experiment: a registered name (see `mortalnet list`).
        preset: one of the experiment's presets (fast, paper, ...); None = fast (a resumed run: its own).
        seed: seeds initialization, data order and sampling; None = 0 (a resumed run: its own).
        overrides: `dotted.key=value` strings changing the preset's config.
        out: run directory; default runs/<experiment>/<preset>-s<seed>-<time>.
        device: auto | cpu | cuda.
        resume: an interrupted run's directory to continue (its stored config is used).
        runs_root: parent of default run directories.
        progress: print progress.
    """
    t0 = time.perf_counter()
    overrides = list(overrides)
    dev = resolve_device(device)
    if resume is not None:
        run_dir = RunDir(Path(resume))
        if not run_dir.path.is_dir():
            raise RunError(f"{run_dir.path} does not exist: nothing to resume")
        exp, config, stored = _stored_config(run_dir)
        if experiment and exp.name != experiment:
            raise cfgmod.ConfigError(f"{run_dir.path} is a run of {exp.name!r}, not {experiment!r}")
        if overrides:
            raise cfgmod.ConfigError("a resumed run keeps its stored config; --set is not allowed with --resume")
        asked = {"preset": preset, "seed": seed}
        for key in ("preset", "seed"):
            if asked[key] is not None and asked[key] != stored[key]:
                raise cfgmod.ConfigError(f"{run_dir.path} is a run with {key} {stored[key]!r}; a resumed run "
                                         f"keeps it (drop --{key} {asked[key]})")
        if out is not None and Path(out).resolve() != run_dir.path.resolve():
            raise cfgmod.ConfigError(f"a resumed run stays in its directory {run_dir.path}; drop --out {out}")
        preset, seed = stored["preset"], stored["seed"]
        if run_dir.exists("summary.json") and run_dir.status().get("state") == "done":
            raise RunError(f"{run_dir.path} already finished; see its summary.json")
        _refuse_if_still_running(run_dir)
        earlier_seconds = checkpoint_train_seconds(run_dir.path)  # its own checkpoint, or its sub-runs'
        resuming = True  # the experiment continues each model that has a checkpoint (ctx.resumes)
        created, already = False, set()  # a resumed run is never removed (see the failure branches)
    else:
        preset = "fast" if preset is None else preset
        seed = 0 if seed is None else seed
        if seed < 0:
            raise cfgmod.ConfigError(f"a seed is an integer >= 0, got {seed}")
        exp = get_experiment(experiment)
        config = preset_config(experiment, preset, overrides)
        _check_before_training(exp, config, RunContext(exp.name, preset, seed, _run_device(exp, device, dev),
                                                       progress=False))
        path = Path(out) if out is not None else new_run_dir(Path(runs_root), experiment, preset, seed)
        run_dir = RunDir(path)
        if path.exists() and not path.is_dir():
            raise RunError(f"--out {path} is a file, not a directory")
        if run_dir.exists("config.json"):
            raise RunError(
                f"{path} already holds a run; continue it with --resume {path} or choose another --out"
            )
        created = not run_dir.path.exists()
        try:
            run_dir.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunError(f"cannot make the run directory {path}: {err}") from None
        already = _paths_under(run_dir.path)  # the user's own files in an existing --out: never the run's
        record = {"experiment": exp.name, "preset": preset, "seed": seed, "overrides": overrides,
                  "config": cfgmod.to_dict(config)}
        run_dir.write_json("config.json", {**record, "sha256": record_digest(record)})
        earlier_seconds, resuming = 0.0, False

    dev = _run_device(exp, device, dev)
    env = {"git_commit": git_commit(), "machine": machine_info(dev), "command": _command_line(),
           "load_average_at_start": _load_average()}
    if resume is not None and run_dir.exists("env.json"):
        first = run_dir.read_json("env.json")
        first.setdefault("resumed", []).append(env)
        run_dir.write_json("env.json", first)
    else:
        run_dir.write_json("env.json", env)

    torch.manual_seed(seed)
    ctx = RunContext(exp.name, preset, seed, dev, run_dir, resume=resuming, progress=progress)
    run_dir.set_status("running", pid=os.getpid(), host=socket.gethostname())
    try:
        result = exp.run(config, ctx)
    except KeyboardInterrupt as err:
        command = f"mortalnet run {exp.name} --resume {run_dir.path}"
        run_dir.set_status("interrupted", resume=command)
        err.resume_command = command  # for the CLI's message
        raise
    except (cfgmod.ConfigError, UnknownNameError, DataError) as err:
        # a refused config (an unknown device preset included) or unreadable data before any training:
        # leave no run behind, so the same --out works once fixed; after some training (a later model
        # refused): keep the run
        if resuming or not _remove_unstarted_run(run_dir, created, already):
            run_dir.set_status("failed", error=f"{type(err).__name__}: {err}")
        raise
    except Exception as err:
        # a value that only fails when the experiment builds its networks and optimizers (e.g. a
        # momentum of 2): before anything trained it is the config's fault, refused like a
        # ConfigError and leaving no run behind
        built = isinstance(err, BUILD_REFUSALS)
        if built and not resuming and _remove_unstarted_run(run_dir, created, already):
            raise _refused_while_building(err) from err
        run_dir.set_status("failed", error=f"{type(err).__name__}: {err}",
                          resume=f"mortalnet run {exp.name} --resume {run_dir.path}")
        raise
    summary = {
        "experiment": exp.name,
        "preset": preset,
        "seed": seed,
        "test_error": result["test_error"],
        "wall_seconds": earlier_seconds + time.perf_counter() - t0,
        "git_commit": env["git_commit"],
        "torch_device": str(dev),
        "machine": machine_label(env["machine"]),
        "load_average": {"start": env["load_average_at_start"], "end": _load_average()},
        **{k: v for k, v in result.items() if k != "test_error"},
    }
    check_summary(summary)
    run_dir.write_json("summary.json", summary)
    run_dir.set_status("done")
    summary["run_dir"] = str(run_dir.path)
    return summary


def _refused_while_building(err: Exception) -> cfgmod.ConfigError:
    """The ConfigError for a value refused while the experiment was building its models."""
    return cfgmod.ConfigError(f"the config was refused while the experiment was being built: "
                              f"{type(err).__name__}: {err}")


def _check_before_training(exp: Any, config: Any, ctx: RunContext) -> None:
    """`exp.check`: every model of a new run built once before its directory is made, so that a setting
    only a later model refuses is a ConfigError (exit 2, no run left behind) before the first model trains."""
    try:
        exp.check(config, ctx)
    except (cfgmod.ConfigError, UnknownNameError, DataError):
        raise
    except BUILD_REFUSALS as err:
        raise _refused_while_building(err) from err


def _run_device(exp: Any, device: str, dev: torch.device) -> torch.device:
    """The device the experiment runs on: `dev`, except the CPU for a cpu-only experiment under --device auto."""
    if device == "auto" and exp.cpu_only:
        return torch.device("cpu")  # e.g. ff-pipeline's gloo ranks: a visible GPU is not an error
    return dev


def _refuse_if_still_running(run_dir: RunDir) -> None:
    """RunError when the run's status says running and the process that wrote it is alive on this
    machine: two processes training into one directory would overwrite each other's checkpoints."""
    status = run_dir.status() if run_dir.exists("status.json") else {}
    pid = status.get("pid")
    if status.get("state") != "running" or not isinstance(pid, int) or pid == os.getpid():
        return
    if status.get("host", socket.gethostname()) != socket.gethostname():
        return  # another machine's process: nothing to ask here
    try:
        os.kill(pid, 0)  # signal 0: does the process exist?
    except ProcessLookupError:
        return  # it died (kill -9, power loss): resuming is what --resume is for
    except PermissionError:
        pass  # it exists, owned by someone else
    try:  # Linux: a killed child its parent has not reaped yet is a zombie, not a running run
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return
    except (OSError, IndexError):
        pass
    raise RunError(f"{run_dir.path} is still running (process {pid}); resume it after that process has stopped")


def _stored_config(run_dir: RunDir) -> tuple[Any, Any, dict[str, Any]]:
    """(experiment, config, stored record) from a run's config.json; a hand-edited or foreign file
    (not an object, a field missing or of the wrong type, an unknown experiment) is a RunError."""
    stored = run_dir.read_json("config.json")
    where = run_dir.path / "config.json"
    fields = {"experiment": str, "preset": str, "seed": int, "config": dict}
    bad = [k for k, t in fields.items() if not isinstance(stored, dict) or not isinstance(stored.get(k), t)
           or isinstance(stored.get(k), bool)]
    if bad:
        raise RunError(f"{where} is not a mortalnet run config: {', '.join(bad)} missing or of the wrong type")
    if "sha256" in stored and stored["sha256"] != record_digest(stored):  # records before the digest have none
        raise RunError(f"{where} has been edited: it does not match the sha256 written with it (a run's config "
                       "is fixed once it starts; start a new run with --set to change it)")
    try:
        exp = get_experiment(stored["experiment"])
        config = cfgmod.from_dict(exp.Config, stored["config"])
    except (UnknownNameError, cfgmod.ConfigError) as err:
        raise RunError(f"{where}: {err}") from None
    return exp, config, stored


def _stored_run(run_path: str | Path, device: str) -> tuple[Any, Any, RunContext]:
    """(experiment, config, context) of a saved run, for re-evaluation."""
    run_dir = RunDir(Path(run_path))
    if not run_dir.path.is_dir():
        raise RunError(f"{run_dir.path} is not a directory")
    exp, config, stored = _stored_config(run_dir)
    ctx = RunContext(exp.name, stored["preset"], stored["seed"], resolve_device(device), run_dir, progress=False)
    return exp, config, ctx


def evaluate(run_path: str | Path, device: str = "auto") -> dict[str, Any]:
    """Re-evaluate a saved run's checkpoint on the test set; writes <run>/eval.json."""
    exp, config, ctx = _stored_run(run_path, device)
    result = exp.evaluate(config, ctx)
    result = {"experiment": exp.name, "preset": ctx.preset, "seed": ctx.seed, **result}
    ctx.run.write_json("eval.json", result)
    return result


def load_learner(run_path: str | Path, device: str = "auto", checkpoint: str | Path | None = None):
    """The trained learner of a saved run, for analysis in Python: (learner, config).

    Loads the run's final checkpoint (or the snapshot file `checkpoint`) into a learner built from
    the run's own config.json, e.g. ``learner, cfg = mn.load_learner("results/ff-supervised/paper/seed0")``
    then ``learner.evaluate(x, y)``. For experiments that train one learner (SupervisedExperiment)."""
    exp, config, ctx = _stored_run(run_path, device)
    if not hasattr(exp, "build_learner"):
        raise cfgmod.ConfigError(f"{exp.name} trains several models; load its sub-runs' checkpoints instead")
    learner = exp.build_learner(config, ctx)
    ctx.run.load_into(learner, None if checkpoint is None else Path(checkpoint))
    return learner, config


def refit_readout(run_path: str | Path, epochs: int = 20, device: str = "auto") -> dict[str, Any]:
    """Refit a saved FF run's linear softmax on its frozen final layers, then test it.

    For the rules with a readout on the last layers' normalized activities (ff-unsupervised,
    ff-local-rf): `learner.refit_readout` on the training images (the run's seed orders them),
    then the softmax test error on validation and test before and after. The checkpoint is not
    changed; writes <run>/readout_refit.json."""
    if epochs < 1:
        raise cfgmod.ConfigError(f"the readout is refit for a number of epochs >= 1, got {epochs}")
    exp, config, ctx = _stored_run(run_path, device)
    learner, _ = load_learner(run_path, device)
    if not hasattr(learner, "refit_readout"):
        raise cfgmod.ConfigError(f"{exp.name}'s learner has no linear readout on frozen layers to refit")
    data = exp.load_data(config)
    splits = {"valid": data.valid.tensors(ctx.device), "test": data.test.tensors(ctx.device)}
    before = {k: learner.evaluate(*xy)["error_softmax"] for k, xy in splits.items() if len(xy[1])}
    t0 = time.perf_counter()
    train_errors = learner.refit_readout(*data.train.tensors(ctx.device), epochs=epochs, seed=ctx.seed)
    seconds = time.perf_counter() - t0
    after = {k: learner.evaluate(*xy)["error_softmax"] for k, xy in splits.items() if len(xy[1])}
    result = {"experiment": exp.name, "preset": ctx.preset, "seed": ctx.seed, "epochs": epochs,
              **{f"{k}_error_before": v for k, v in before.items()},
              **{f"{k}_error_after": v for k, v in after.items()},
              "train_error_by_epoch": train_errors, "refit_seconds": seconds, "git_commit": git_commit()}
    ctx.run.write_json("readout_refit.json", result)
    return result


def evaluate_snapshots(run_path: str | Path, device: str = "auto") -> list[dict[str, Any]]:
    """Test error of every snapshot a run kept (`training.snapshot_every`), with the training seconds at
    which it was taken: the test-error-vs-time curve, computed after training. Writes <run>/snapshots.json."""
    exp, config, ctx = _stored_run(run_path, device)
    if not ctx.run.snapshots():
        raise RunError(f"{ctx.run.path} has no snapshots (run it with --set training.snapshot_every=N)")
    rows = exp.evaluate_snapshots(config, ctx)
    ctx.run.write_json("snapshots.json", rows)
    return rows


def _paths_under(folder: Path) -> set[Path]:
    """Every file and folder below folder (recursively)."""
    return set(folder.rglob("*"))


RUN_BOOKKEEPING = ("config.json", "env.json", "status.json")
"""What `run` itself writes into a run directory before the experiment starts."""


def _remove_unstarted_run(run_dir: RunDir, created: bool, already: set[Path]) -> bool:
    """Undo what `run` wrote for a run refused before training (a ConfigError or DataError):
    its config, env and status files, and the directory when `run` made it and it is now empty.
    A run in which the experiment wrote any file (a checkpoint, metrics, an agent's record, its own
    or a sub-run's, e.g. the first model of a multi-model experiment refused at its second) is
    kept, marked failed; `already` are the paths that were in the directory before the run began.
    Returns whether the run was removed."""
    new = _paths_under(run_dir.path) - already - {run_dir.path / name for name in RUN_BOOKKEEPING}
    if any(not p.is_dir() for p in new):
        return False
    for name in RUN_BOOKKEEPING:
        (run_dir.path / name).unlink(missing_ok=True)
    for folder in sorted(new, reverse=True):  # empty folders the experiment made (e.g. plots/), deepest first
        folder.rmdir()
    if created and not any(run_dir.path.iterdir()):
        run_dir.path.rmdir()
    return True


def _load_average() -> list[float] | None:
    """1/5/15-minute load averages: how busy the machine was (times are comparable only when idle)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _command_line() -> str:
    import sys

    return " ".join(sys.argv)
