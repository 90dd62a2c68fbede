"""Run folders: each run writes its config, seed, commit and metrics beside its outputs."""

from __future__ import annotations

import dataclasses
import json
import platform
import random
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml


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


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def start_run(out: Path | str, kind: str, config: dict[str, Any], seed: int) -> Path:
    """Create the run folder and write ``config.yaml`` and a first ``run.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    record = {
        "kind": kind,
        "seed": seed,
        "commit": git_commit(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": environment(),
        "status": "running",
    }
    write_json(out / "run.json", record)
    return out


def finish_run(out: Path | str, metrics: dict[str, Any], **extra: Any) -> None:
    """Add the metrics (also written alone to ``metrics.json``) and mark the run done."""
    out = Path(out)
    record = json.loads((out / "run.json").read_text())
    record.update(extra, status="done", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    record["metrics"] = metrics
    write_json(out / "run.json", record)
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


def write_json(path: Path | str, data: Any) -> Path:
    """Write atomically (a crash never leaves half a file), creating the folder; returns path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path
