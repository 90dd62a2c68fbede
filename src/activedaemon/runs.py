"""Run folders: each run writes its config, seed, commit and metrics beside its outputs."""

from __future__ import annotations

import dataclasses
import json
import platform
import random
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

# The files of a model run folder (classifier or encoder): its card and its weights.
CARD_FILE, WEIGHTS_FILE = "card.yaml", "weights.pt"
RECORD_SCHEMA = 1  # of run.json; raised when its keys change meaning


def git_commit() -> str:
    """The commit of the source tree in use ('+dirty' if it has changes), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("+dirty" if dirty else "")) if sha else "unknown"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    packages = ("activedaemon", "torch", "torchvision", "numpy", "torchmetrics", "bchlib")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "packages": {name: _version(name) for name in packages},
    }


def start_run(
    out: Path | str, kind: str, config: dict[str, Any], seed: int | None, prefix: str = ""
) -> Path:
    """Create the run folder and write ``config.yaml`` and a first ``run.json`` (status
    ``running``), their names after ``prefix``. Prefer ``run_record``, which marks the end."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{prefix}config.yaml").write_text(yaml.safe_dump(_plain(config), sort_keys=False))
    record = {
        "schema": RECORD_SCHEMA,
        "kind": kind,
        "seed": seed,
        "argv": list(sys.argv),
        "commit": git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": environment(),
        "status": "running",
    }
    write_json(out / f"{prefix}run.json", record)
    return out


def _plain(value: Any) -> Any:
    """Dataclasses, paths and tuples as plain YAML values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


@dataclasses.dataclass
class RunRecord:
    """The open record of a run: set ``metrics`` (and ``extra`` for run.json only) before the
    ``run_record`` block ends."""

    out: Path
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@contextmanager
def run_record(
    out: Path | str, kind: str, config: Any, seed: int | None = None, prefix: str = ""
) -> Iterator[RunRecord]:
    """Every command that writes results runs inside one: ``config.yaml`` and ``run.json``
    (kind, config, argv, seed, commit, package versions) are written first with status
    ``running``; the block's end marks ``done`` with the metrics, an exception ``failed`` with
    the error (and re-raises it). ``prefix`` names the files of a record that shares its
    folder with another run (``results.`` -> results.run.json beside results.json)."""
    record = RunRecord(start_run(out, kind, config, seed, prefix))
    try:
        yield record
    except BaseException as e:
        _mark_failed(record.out / f"{prefix}run.json", e)
        raise
    finish_run(record.out, record.metrics, prefix=prefix, **record.extra)


def _mark_failed(path: Path, error: BaseException) -> None:
    record = json.loads(path.read_text())
    record.update(
        status="failed",
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        error=f"{type(error).__name__}: {error}",
        traceback=traceback.format_exception(error)[-5:],
    )
    write_json(path, record)


def finished_run(out: Path | str, config: Any) -> bool:
    """Whether ``out`` holds a run that ended ``done`` with exactly this config (reusable)."""
    out = Path(out)
    try:
        record = json.loads((out / "run.json").read_text())
        saved = yaml.safe_load((out / "config.yaml").read_text())
    except (OSError, ValueError):
        return False
    return record.get("status") == "done" and _with_defaults(saved, config) == _plain(config)


def _with_defaults(saved: Any, config: Any) -> Any:
    """``saved`` with the fields added since it was written set to their defaults, so that a new
    option whose default keeps the old behaviour does not make every earlier run look different."""
    if not (isinstance(saved, dict) and dataclasses.is_dataclass(config)):
        return saved
    filled = dict(saved)
    for f in dataclasses.fields(config):
        if f.name in filled:
            filled[f.name] = _with_defaults(filled[f.name], getattr(config, f.name))
        elif f.default is not dataclasses.MISSING:
            filled[f.name] = _plain(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            filled[f.name] = _plain(f.default_factory())
    return filled


def peak_rss_gib() -> float | None:
    """This process's peak resident memory so far (GiB), imports included; None where the
    platform does not say (no ``resource`` module)."""
    try:
        import resource
    except ImportError:
        return None
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return round(kib / 2**20 / (1024 if sys.platform == "darwin" else 1), 3)  # macOS: bytes


def finish_run(out: Path | str, metrics: dict[str, Any], prefix: str = "", **extra: Any) -> None:
    """Add the metrics (also written alone to ``metrics.json`` for a run folder's own record)
    and mark the run done."""
    out = Path(out)
    record = json.loads((out / f"{prefix}run.json").read_text())
    record.update(extra, status="done", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    record["peak_rss_gib"] = peak_rss_gib()
    record["metrics"] = metrics
    write_json(out / f"{prefix}run.json", record)
    if not prefix:
        write_json(out / "metrics.json", metrics)


def config_from_dict(cls: type, values: dict, nested: dict[str, type], what: str):
    """Build the config dataclass ``cls`` from plain values (YAML, --set), turning the dicts of
    ``nested`` fields into their dataclasses and naming unknown keys in the error."""
    values = dict(values)
    for name, nested_cls in nested.items():
        if isinstance(values.get(name), dict):
            values[name] = nested_cls(**values[name])
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {what} options: {unknown}")
    return cls(**values)


def release_freed_memory() -> None:
    """Hand the heap's freed pages back to the system (glibc's ``malloc_trim``; elsewhere a
    no-op): after a large set is built and its temporaries freed, the process's memory stays
    at what it holds, not at its high-water mark."""
    import ctypes
    import ctypes.util

    with suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text())


def write_json(path: Path | str, data: Any) -> Path:
    """Write atomically (a crash never leaves half a file), creating the folder; returns path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path
