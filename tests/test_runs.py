"""Run folders: a finished run is reused only when its config matches."""

from dataclasses import dataclass, field

import pytest
import yaml

from activedaemon.runs import finished_run, run_record


@dataclass
class Inner:
    quality: int = 90


@dataclass
class Old:
    epochs: int = 5
    inner: Inner = field(default_factory=Inner)


@dataclass
class New(Old):  # a later version of the config: one more option, its default the old behaviour
    nesterov: bool = False


def test_finished_run_matches_configs_and_fills_new_defaults(tmp_path):
    with run_record(tmp_path / "run", "test", Old(), seed=0) as rec:
        rec.metrics = {"ok": 1}
    assert finished_run(tmp_path / "run", Old())
    assert finished_run(tmp_path / "run", New())  # the new option at its default: same run
    assert not finished_run(tmp_path / "run", New(nesterov=True))
    assert not finished_run(tmp_path / "run", Old(epochs=6))
    assert not finished_run(tmp_path / "run", Old(inner=Inner(quality=75)))
    # an option the saved run had but the config lost is a difference too
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({**saved, "gone": 1}))
    assert not finished_run(tmp_path / "run", Old())


def test_failed_run_is_not_finished(tmp_path):
    with pytest.raises(RuntimeError), run_record(tmp_path / "run", "test", Old(), seed=0):
        raise RuntimeError("boom")
    assert not finished_run(tmp_path / "run", Old())
    assert not finished_run(tmp_path / "missing", Old())


def test_run_record_carries_the_peak_memory(tmp_path):
    """The peak RSS at the end of a run: at least what the process held when a large block was
    alive inside the run (imports alone are far more than 0)."""
    import json

    import numpy as np

    with run_record(tmp_path / "run", "test", Old(), seed=0) as rec:
        block = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MiB, touched
        rec.metrics = {"sum": int(block[:: 2**20].sum())}
        del block
    peak = json.loads((tmp_path / "run" / "run.json").read_text())["peak_rss_gib"]
    assert peak >= 64 / 1024
