"""Self-describing run records: config, environment, per-epoch metrics, summary, checkpoints.

A run lives in one directory (default `runs/<experiment>/<preset>-s<seed>-<time>/`):

    config.json        the full experiment config, plus experiment/preset/seed
    env.json           git commit, library versions, machine (written at start and on resume)
    metrics.jsonl      one JSON object per epoch
    summary.json       final numbers; always has experiment, preset, seed, test_error,
                       wall_seconds, git_commit (the contract other tools rely on)
    status.json        running | done | failed (with the error) | interrupted
    checkpoint.safetensors   latest state (tensors only, loaded without pickle); epoch in metadata
    snapshots/epochNNNN.safetensors   the state after chosen epochs (TrainingConfig.snapshot_every)
    plots/*.png        figures written by the experiment
    tb/                TensorBoard events, when the tensorboard package is installed

Every file is written atomically (temp file + rename), so a kill -9 leaves either the old or the
new version, never half a file; `resume` continues from the last checkpoint.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

SUMMARY_KEYS = ("experiment", "preset", "seed", "test_error", "wall_seconds", "git_commit")
CHECKPOINT = "checkpoint.safetensors"
SNAPSHOTS = "snapshots"


class RunError(RuntimeError):
    """A run directory that cannot be used as asked (missing, not a run, incompatible)."""


def _umask_from_proc() -> int | None:
    """The umask as Linux reports it in /proc/self/status (None where there is no such line)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _umask_by_setting() -> int:
    """The umask read the portable way: set a strict one and put the old one back. For that instant
    other threads create files with the strict mask (owner-only), never world-writable ones."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


@functools.cache
def _process_umask() -> int:
    """The process umask, read once when a file is first written (not at import time)."""
    mask = _umask_from_proc()
    return _umask_by_setting() if mask is None else mask


def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` survive a crash: fsync the directory itself. Platforms that cannot
    open or sync a directory (Windows, some network file systems) are skipped."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, even after a
    crash: the data is synced before the rename, and the rename is synced after it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_process_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (torch.Tensor,)):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def _clean(obj: Any) -> Any:
    """Replace non-finite floats by None so the JSON stays standard (tensors and NumPy values too)."""
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # tensor, ndarray, NumPy scalar
        obj = obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomically write `obj` as indented JSON."""
    text = json.dumps(_clean(obj), indent=2, default=_json_default, allow_nan=False)
    atomic_write_bytes(Path(path), (text + "\n").encode())


def read_json(path: Path) -> Any:
    """Read a JSON file with an error that names the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunError(f"{path} does not exist") from None
    except json.JSONDecodeError as err:
        raise RunError(f"{path} is not valid JSON ({err})") from None


def git_commit(repo: Path | None = None) -> str:
    """The commit of the source tree this code runs from (with '-dirty' if it has changes)."""
    repo = repo or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo, capture_output=True, text=True, timeout=10,
        )
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# /proc/cpuinfo flags that decide how fast matrix products run (float32 FMA width, bf16 dot products,
# Intel AMX tiles): two "AMD EPYC" VMs of the same name can differ 2x in bf16 matmul rate.
MATMUL_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "avx_vnni")


def cpu_details(cpuinfo: str | None = None) -> dict[str, Any]:
    """What identifies the CPU beyond its marketing name: vendor, family/model/stepping (e.g. AMD
    family 25 is Zen 3/4, 26 is Zen 5), cache, the matmul-relevant flags it has, and the SIMD level
    PyTorch dispatches to. `cpuinfo` is /proc/cpuinfo's text (read when None); where there is none
    (not Linux), only the SIMD level."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    first: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if first:
                break  # the first processor's block is enough
            continue
        key, _, value = line.partition(":")
        first.setdefault(key.strip(), value.strip())
    details: dict[str, Any] = {}
    for key, name in (("vendor_id", "vendor"), ("cpu family", "family"), ("model", "model"),
                      ("stepping", "stepping"), ("cache size", "cache")):
        if key in first:
            details[name] = first[key]
    if "flags" in first:
        flags = set(first["flags"].split())
        details["matmul_flags"] = [f for f in MATMUL_CPU_FLAGS if f in flags]
    try:
        details["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # pragma: no cover - torch < 2.1
        pass
    return details


def machine_info(torch_device: torch.device | str = "cpu") -> dict[str, Any]:
    """Versions and hardware: what a reader needs to compare a number with another run's."""
    import numpy

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu": _cpu_model(),
        "cpu_details": cpu_details(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_device": str(torch_device),
    }
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import safetensors

        info["safetensors"] = safetensors.__version__
    except ImportError:  # pragma: no cover - a hard dependency
        pass
    return info


def machine_label(env: Mapping[str, Any]) -> str:
    """A short human label for a machine: 'AMD EPYC, 2 CPU threads' or the GPU name."""
    if str(env.get("torch_device", "cpu")).startswith("cuda") and env.get("gpu"):
        return str(env["gpu"])
    cpu = env.get("cpu", "CPU")
    details = env.get("cpu_details") or {}
    if "family" in details and "model" in details:  # records before 2026-11-24 lack it
        cpu = f"{cpu} (family {details['family']} model {details['model']})"
    return f"{cpu}, {env.get('torch_threads', '?')} threads"


def benchmark_provenance(name: str, args: Any, architecture: str, env: Mapping[str, Any]) -> dict[str, Any]:
    """The head of a benchmark record: name, the command line that reproduces it (every argparse
    option but --out), what was measured, the machine (label and details) and the git commit."""
    options = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                       if k != "out" and v != "")  # an empty string is an unset option (e.g. --tag)
    return {"benchmark": name, "command": f"python benchmarks/{name}.py {options}", "architecture": architecture,
            "machine": machine_label(env), "env": env, "git_commit": git_commit()}


def record_tag(text: str) -> str:
    """argparse type for a benchmark's --tag: letters, digits, '-' and '_' (it becomes part of a file name)."""
    if text and not text.replace("-", "").replace("_", "").isalnum():
        import argparse

        raise argparse.ArgumentTypeError(f"{text!r}: use letters, digits, '-' and '_' only (it names a file)")
    return text


def benchmark_record_path(out: str | Path, name: str, device: str, tag: str = "") -> Path:
    """Where a benchmark writes its record: <out>/<name>-<device>[-<tag>].json. A tag (a preset, a
    host) lets records of several machines or configurations sit side by side in one folder."""
    return Path(out) / (f"{name}-{device}" + (f"-{record_tag(tag)}" if tag else "") + ".json")


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


@dataclass
class RunDir:
    """A run's directory and the operations on its files."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    # -- files -------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def plots(self) -> Path:
        p = self.path / "plots"
        p.mkdir(parents=True, exist_ok=True)
        return p

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_json(self.path / name, obj)

    def read_json(self, name: str) -> Any:
        return read_json(self.path / name)

    def exists(self, name: str) -> bool:
        return (self.path / name).exists()

    # -- status ------------------------------------------------------------------------------
    def set_status(self, state: str, **extra: Any) -> None:
        self.write_json("status.json", {"state": state, "time": _now(), **extra})

    def status(self) -> dict[str, Any]:
        return self.read_json("status.json") if self.exists("status.json") else {"state": "unknown"}

    # -- metrics -----------------------------------------------------------------------------
    def metrics(self) -> list[dict[str, Any]]:
        """All complete per-epoch metric lines (a torn last line from a kill is ignored)."""
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
        return rows

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        """Add one epoch's metrics; the whole file is rewritten atomically (it is small)."""
        rows = self.metrics() + [dict(row)]
        self.write_metrics(rows)

    def write_metrics(self, rows: list[Mapping[str, Any]]) -> None:
        text = "".join(
            json.dumps(_clean(dict(r)), default=_json_default, allow_nan=False) + "\n" for r in rows
        )
        atomic_write_bytes(self.path / "metrics.jsonl", text.encode())

    # -- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
                        path: Path | None = None) -> None:
        """Atomically save tensors (safetensors, no pickle) with JSON metadata (default: the checkpoint)."""
        from safetensors.torch import save

        flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        meta = {**meta, TENSORS_DIGEST: tensors_digest(flat)}
        blob = save(flat, metadata={"mortalnet": json.dumps(dict(meta), default=_json_default)})
        atomic_write_bytes(self.checkpoint_path if path is None else path, blob)

    def save_snapshot(self, epoch: int, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
        """Keep the state after `epoch` in snapshots/epochNNNN.safetensors (for curves computed after training)."""
        folder = self.path / SNAPSHOTS
        folder.mkdir(exist_ok=True)
        path = folder / f"epoch{epoch:04d}.safetensors"
        self.save_checkpoint(tensors, {**meta, "epoch": epoch}, path)
        return path

    def snapshots(self) -> list[Path]:
        """The saved snapshots, in epoch order."""
        folder = self.path / SNAPSHOTS
        return sorted(folder.glob("epoch*.safetensors")) if folder.is_dir() else []

    def load_checkpoint(self, path: Path | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Load the latest checkpoint, or the snapshot at `path`: (tensors, metadata). Never unpickles."""
        from safetensors import SafetensorError
        from safetensors.torch import load

        path = self.checkpoint_path if path is None else Path(path)
        if not path.exists():
            raise RunError(f"{self.path} has no checkpoint ({path.name}) to resume or evaluate from")
        data = path.read_bytes()
        try:
            tensors = load(data)
            meta = _mortalnet_metadata(data)
            if "epoch" in meta:
                meta["epoch"] = int(meta["epoch"])
            elif path == self.checkpoint_path:
                raise ValueError("its metadata has no epoch")
        except (SafetensorError, ValueError, TypeError) as err:
            raise RunError(f"{path} is not a readable mortalnet checkpoint: {err}") from None
        written = meta.pop(TENSORS_DIGEST, None)  # checkpoints written before the digest existed have none
        if written is not None and written != tensors_digest(tensors):
            raise RunError(f"{path} has been altered: its tensors do not match the sha256 written with them")
        return tensors, meta


    def load_into(self, learner: Any, path: Path | None = None) -> dict[str, Any]:
        """Load the latest checkpoint (or the snapshot at `path`) into `learner`; returns its metadata.
        A checkpoint whose tensors do not fit the learner (missing, unexpected or mis-shaped) is a RunError."""
        tensors, meta = self.load_checkpoint(path)
        try:
            learner.load_state_tensors(tensors)
        except (RuntimeError, KeyError, ValueError) as err:
            where = self.checkpoint_path if path is None else path
            raise RunError(f"{where} does not fit this run's learner: {err}") from None
        return meta


def checkpoint_train_seconds(run_path: Path) -> float:
    """Training seconds stored in a run's checkpoints: its own, or, for an experiment that trains
    several models into sub-runs, the sum of theirs (what an interrupted run had done before a resume).
    Reads only each file's JSON header."""
    total = 0.0
    for path in Path(run_path).rglob(CHECKPOINT):
        try:
            with path.open("rb") as f:
                head = f.read(8)
                n = int.from_bytes(head, "little")
                if len(head) < 8 or n > path.stat().st_size - 8:
                    raise ValueError(f"its header claims {n} bytes, more than the file holds")
                head += f.read(n)  # the 8-byte length and the JSON header, no tensors
            total += float(_mortalnet_metadata(head).get("train_seconds", 0.0))
        except (ValueError, TypeError) as err:
            raise RunError(f"{path} is not a readable mortalnet checkpoint: {err}") from None
    return total


TENSORS_DIGEST = "tensors_sha256"  # metadata key of a checkpoint's checksum


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order: a checkpoint's
    checksum, kept in its metadata, so that a changed byte is caught on load (it guards against
    corruption and hand edits, not against someone who recomputes it)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def record_digest(record: Mapping[str, Any]) -> str:
    """sha256 of a config.json record without its own "sha256" field (canonical JSON)."""
    body = {k: v for k, v in record.items() if k != "sha256"}
    text = json.dumps(_clean(body), sort_keys=True, default=_json_default, allow_nan=False)  # as written to disk
    return hashlib.sha256(text.encode()).hexdigest()


def _mortalnet_metadata(data: bytes) -> dict[str, Any]:
    """mortalnet's metadata (a JSON object stored as the string `__metadata__["mortalnet"]`) from the
    start of a safetensors byte string (8-byte header length, then the JSON header). Raises
    ValueError when any level is not what mortalnet writes (a tampered or foreign file)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])  # JSONDecodeError and UnicodeDecodeError are ValueErrors
    block = header.get("__metadata__") or {} if isinstance(header, dict) else None
    if not isinstance(block, dict):
        raise ValueError("the safetensors header is not a JSON object with a __metadata__ object")
    text = block.get("mortalnet", "{}")
    meta = json.loads(text) if isinstance(text, str) else None
    if not isinstance(meta, dict):
        raise ValueError("its mortalnet metadata is not a JSON object")
    return meta


def new_run_dir(root: Path, experiment: str, preset: str, seed: int) -> Path:
    """A fresh directory `root/<experiment>/<preset>-s<seed>-<timestamp>`."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / experiment / f"{preset}-s{seed}-{stamp}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def check_summary(summary: Mapping[str, Any]) -> None:
    """Raise if a summary misses a key of the contract (SUMMARY_KEYS)."""
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    if missing:
        raise RunError(f"summary lacks required keys: {', '.join(missing)}")
