"""The run layer: config.json schema and kinds, the progress log, the loop."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
from pathlib import Path

import pytest

from bpm_agents.checkpoint import CheckpointError
from bpm_agents.runs import (
    SCHEMA,
    ProgressLog,
    read_run_meta,
    run_kind,
    run_loop,
    write_run_config,
)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_config_schema_round_trip_and_versions(tmp_path):
    write_run_config(tmp_path, "rl", "plastic-a2c", {"hidden_size": 7}, command=["train.py", "--x"], note=1)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["schema"] == SCHEMA and data["versions"]["torch"]
    meta = read_run_meta(tmp_path)
    assert (meta.kind, meta.algo, meta.config, meta.command) == (
        "rl",
        "plastic-a2c",
        {"hidden_size": 7},
        ["train.py", "--x"],
    )
    assert meta.extra == {"note": 1}
    with pytest.raises(ValueError, match="kind must be one of rl, sb3, lm, got 'x'"):
        write_run_config(tmp_path, "x", "a", {})


@pytest.mark.parametrize(
    "data, kind",
    [
        ({"algo": "plastic-a2c", "config": {}}, "rl"),
        ({"algo": "plastic-ppo", "config": {}}, "rl"),
        ({"algo": "recurrent-ppo", "config": {}}, "sb3"),
        ({"model": {"variant": "lstm"}, "train": {}, "parameters": 5, "argv": ["a"]}, "lm"),
    ],
)
def test_folders_of_earlier_versions_are_recognised(tmp_path, data, kind):
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert run_kind(tmp_path) == kind
    if kind == "lm":
        meta = read_run_meta(tmp_path)
        assert meta.config == {"model": {"variant": "lstm"}, "train": {}} and meta.extra["parameters"] == 5


@pytest.mark.parametrize(
    "text, message",
    [
        ("{", "is corrupted"),
        ("[1]", "is not a backpropamine-gym run config"),
        (
            json.dumps({"schema": SCHEMA, "kind": "zz", "algo": "a", "config": {}}),
            "kind 'zz'; expected one of rl, sb3, lm",
        ),
        (json.dumps({"x": 1}), "no kind"),
        (
            json.dumps({"schema": SCHEMA, "kind": "rl", "algo": "a", "config": "not a dict"}),
            "field 'config' must be a JSON object",
        ),
        (
            json.dumps({"schema": SCHEMA, "kind": "rl", "algo": 3, "config": {}}),
            "field 'algo' must be a string, got 3",
        ),
    ],
)
def test_bad_config_json_names_what_is_wrong(tmp_path, text, message):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace("[", r"\[")):
        read_run_meta(tmp_path)


def test_missing_folder_and_missing_config(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_run_meta(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="config.json is missing"):
        read_run_meta(tmp_path)


def test_progress_log_truncates_on_resume_and_leaves_optional_nans_empty(tmp_path):
    path = tmp_path / "p.csv"
    with ProgressLog(path, ["update", "wall_time", "loss", "eta"], optional=["eta"]) as log:
        for n in range(1, 6):
            log.write({"update": n, "wall_time": 1.5 * n, "loss": math.nan, "eta": math.nan})
    rows = _rows(path)
    assert [r["update"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert rows[0]["loss"] == "nan" and rows[0]["eta"] == ""  # only optional columns go empty
    log = ProgressLog(path, ["update", "wall_time", "loss", "eta"], keep_through=3)
    assert log.last_float("wall_time") == 4.5
    log.write({"update": 4, "wall_time": 9.0})
    log.close()
    assert [(r["update"], r["wall_time"]) for r in _rows(path)] == [
        ("1", "1.5"),
        ("2", "3.0"),
        ("3", "4.5"),
        ("4", "9.0"),
    ]
    # a new run (keep_through None) starts the file afresh
    ProgressLog(path, ["update"]).close()
    assert path.read_text() == "update\n"


class _CountingJob:
    def __init__(self, stop_at: int | None = None) -> None:
        self.updates_done = 0
        self.saved: list[int] = []
        self.stop_at = stop_at

    def step(self) -> dict[str, float]:
        self.updates_done += 1
        if self.updates_done == self.stop_at:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: handled after this update
        return {"reward_mean": float(self.updates_done)}

    def save(self) -> None:
        self.saved.append(self.updates_done)


def test_loop_logs_every_update_and_checkpoints_at_the_interval_and_the_end(tmp_path):
    job = _CountingJob()
    log = ProgressLog(tmp_path / "p.csv", ["update", "wall_time", "reward_mean"])
    result = run_loop(
        job, tmp_path, 7, log, checkpoint_every=3, progress=False, tensorboard=False, reward_window=2
    )
    assert job.saved == [3, 6, 7]
    assert [r["update"] for r in _rows(tmp_path / "p.csv")] == [str(n) for n in range(1, 8)]
    assert (result.updates_done, result.interrupted, result.recent_reward) == (7, False, 6.5)


class _SkippingJob(_CountingJob):
    """A learner whose update k skipped k - 3 of its gradient steps from update 4 on."""

    def step(self) -> dict[str, float]:
        return {**super().step(), "skipped_steps": float(max(0, self.updates_done - 3))}


def test_loop_counts_the_skipped_gradient_steps_of_its_last_updates(tmp_path):
    log = ProgressLog(tmp_path / "p.csv", ["update", "wall_time", "reward_mean", "skipped_steps"])
    result = run_loop(
        _SkippingJob(),
        tmp_path,
        6,
        log,
        checkpoint_every=3,
        progress=False,
        tensorboard=False,
        reward_window=4,
    )
    assert result.recent_skipped == (0 + 1 + 2 + 3, 4)  # updates 3-6
    assert result.summary("r").endswith(
        "recent mean episode reward 4.500, 6 gradient steps skipped in the last 4 updates "
        "(norm above grad_skip), run folder r"
    )
    fields = ["update", "wall_time", "reward_mean", "skipped_steps"]
    clean = run_loop(
        _CountingJob(),
        tmp_path,
        2,
        ProgressLog(tmp_path / "q.csv", fields[:3]),
        progress=False,
        tensorboard=False,
    )
    assert clean.recent_skipped is None and "skipped" not in clean.summary("r")
    fine = run_loop(
        _SkippingJob(),
        tmp_path,
        3,
        ProgressLog(tmp_path / "s.csv", fields),
        progress=False,
        tensorboard=False,
    )
    assert fine.recent_skipped == (0, 3) and "skipped" not in fine.summary("r")


def test_loop_stops_after_the_update_a_signal_arrives_in_and_saves(tmp_path):
    job = _CountingJob(stop_at=4)
    log = ProgressLog(tmp_path / "p.csv", ["update", "wall_time", "reward_mean"])
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN under nohup, the default handler in a shell
    result = run_loop(job, tmp_path, 100, log, checkpoint_every=50, progress=False, tensorboard=False)
    assert (result.updates_done, result.interrupted, result.signal_name) == (4, True, "SIGINT")
    assert job.saved == [4] and len(_rows(tmp_path / "p.csv")) == 4
    assert signal.getsignal(signal.SIGINT) is before  # the handler is restored
