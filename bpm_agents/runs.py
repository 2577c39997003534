"""The run folder: one layout, one config schema, one progress log and one loop for every kind of run.

Every trainer of the project (plastic A2C / PPO, the Stable-Baselines3 peers, the language
models) writes the same folder::

    config.json      {"schema", "kind", "algo", "config", "command", "versions", ...}; written once
    checkpoint.pt    latest state, through :mod:`bpm_agents.checkpoint` (atomic, no pickled code)
    progress.csv     one row per update (for the language models: one per validation)
    tb/              TensorBoard event files (optional)

and a language model also ``best.pt`` (the lowest validation perplexity) and ``test.json``.

``kind`` says which code can open the folder (``rl``: our plastic trainers; ``sb3``: the peers;
``lm``: the Penn Treebank models), so ``evaluate RUN`` works for every kind. Folders written
before the schema existed (no ``kind``) are recognised by their keys.

A trainer supplies a :class:`Job` (one update, its metrics, how to save) and :func:`run_loop`
does the rest: progress bar, TensorBoard, the CSV rows, periodic checkpoints, Ctrl-C / SIGTERM.
Plastic A2C / PPO and the SB3 peers are jobs of one update per rollout; a language model is a job
of one optimizer step per BPTT segment, which validates (and saves) at checks and epoch ends.
Resume is bit for bit: the progress rows after the checkpoint (work an interruption lost) are
dropped before the loop appends again.
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import sys
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bpm_agents.checkpoint import (
    CheckpointError,
    StopOnSignals,
    atomic_write_json,
    atomic_write_text,
    not_a_folder,
)

SCHEMA = "backpropamine-gym/run/v1"
CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
PROGRESS_FILE = "progress.csv"
TENSORBOARD_DIR = "tb"
#: the kinds of run and what trains them
KINDS = {
    "rl": "plastic actor-critic (plastic-a2c, plastic-ppo)",
    "sb3": "Stable-Baselines3 peer (ppo, a2c, recurrent-ppo)",
    "lm": "Penn Treebank language model",
}
SB3_ALGOS = ("a2c", "ppo", "recurrent-ppo")
#: the first columns of every RL run's progress.csv (each trainer appends its own metrics)
PROGRESS_FIELDS = ["update", "episodes", "env_steps", "wall_time", "reward_mean"]


def info(message: str) -> None:
    """One line for the user on stderr (stdout holds results)."""
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- config.json


def versions() -> dict[str, str]:
    """Versions that decide a run's numbers, recorded in its ``config.json``."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("backpropamine-gym", "torch", "numpy", "gymnasium", "stable-baselines3", "sb3-contrib"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


@dataclass
class RunMeta:
    """What ``config.json`` says about a run folder."""

    kind: str
    algo: str
    config: dict[str, Any]
    command: list[str] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    #: any other top-level keys (e.g. ``parameters`` of a language model)
    extra: dict[str, Any] = field(default_factory=dict)


def write_run_config(
    run_dir: str | Path,
    kind: str,
    algo: str,
    config: dict[str, Any],
    command: Sequence[str] | None = None,
    **extra: Any,
) -> None:
    """Write ``run_dir/config.json`` atomically in the one schema (``extra``: more top-level keys)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    data = {
        "schema": SCHEMA,
        "kind": kind,
        "algo": algo,
        "config": config,
        "command": None if command is None else list(command),
        "versions": versions(),
        **extra,
    }
    atomic_write_json(Path(run_dir) / CONFIG_FILE, data)


def _legacy_kind(data: dict[str, Any]) -> str | None:
    if "algo" in data and "config" in data:
        return "sb3" if data["algo"] in SB3_ALGOS else "rl"
    if "model" in data and "train" in data:
        return "lm"
    return None


def read_run_meta(run_dir: str | Path) -> RunMeta:
    """Read and check ``run_dir/config.json``.

    Raises:
        CheckpointError: no such folder, not a run folder, unreadable or malformed config.json.
    """
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise CheckpointError(f"run folder {run_dir} {not_a_folder(run_dir)}")
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder: {CONFIG_FILE} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is corrupted: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a backpropamine-gym run config")
    kind = data.get("kind") if "schema" in data else _legacy_kind(data)
    if kind not in KINDS:
        shown = f"kind {kind!r}" if "schema" in data else "no kind"
        raise CheckpointError(
            f"{path} is not a backpropamine-gym run config ({shown}; expected one of {', '.join(KINDS)})"
        )
    config: Any
    algo: Any
    if "schema" not in data and kind == "lm":  # before the schema: model / train at the top level
        config = {"model": data.get("model"), "train": data.get("train")}
        algo = "language-model"
        rest = {k: v for k, v in data.items() if k not in ("model", "train", "command")}
    else:
        config, algo = data.get("config"), data.get("algo")
        rest = {
            k: v
            for k, v in data.items()
            if k not in ("schema", "kind", "algo", "config", "command", "versions")
        }
    if not isinstance(algo, str):
        raise CheckpointError(f"{path} field 'algo' must be a string, got {json.dumps(algo)}")
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{path} field 'config' must be a JSON object of settings, got {json.dumps(config)}"
        )
    command = data.get("command")
    found_versions = data.get("versions")
    return RunMeta(
        kind=kind,
        algo=algo,
        config=config,
        command=command if isinstance(command, list) else None,
        versions=found_versions if isinstance(found_versions, dict) else {},
        extra=rest,
    )


def run_kind(run_dir: str | Path) -> str:
    """``rl``, ``sb3`` or ``lm``: which code opens this run folder (:data:`KINDS`)."""
    return read_run_meta(run_dir).kind


# ---------------------------------------------------------------- progress log


def csv_cell(value: Any, optional: bool) -> Any:
    """A CSV cell: empty for a NaN in an optional column (a quantity this run does not have).

    A real quantity that became NaN makes the loss NaN, which stops the run before its row.
    """
    if optional and isinstance(value, float) and math.isnan(value):
        return ""
    return value


class ProgressLog:
    """An append-only CSV log with a fixed header, truncated to a resume point.

    Args:
        path: the CSV file.
        fields: its columns, in order.
        optional: columns whose NaN cells are written empty.
        keep_through: on resume, keep only the rows whose ``key`` column is <= this value (the
            rows after the checkpoint describe work that was lost); ``None`` starts a new file.
        key: the column ``keep_through`` refers to.
    """

    def __init__(
        self,
        path: str | Path,
        fields: Sequence[str],
        optional: Iterable[str] = (),
        keep_through: int | None = None,
        key: str = "update",
    ) -> None:
        self.path = Path(path)
        self.fields = list(fields)
        self.optional = set(optional)
        self.key = key
        #: the last kept row (or None): a resumed run continues its counters from it
        self.last_row: dict[str, str] | None = None
        rows: list[dict[str, str]] = []
        if keep_through is not None and self.path.exists():
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames:  # a log with other columns keeps them (an older version's)
                    self.fields = list(reader.fieldnames)
                rows = [
                    r for r in reader if _int_or_none(r.get(key)) is not None and int(r[key]) <= keep_through
                ]
        self.last_row = rows[-1] if rows else None
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, out.getvalue())
        self._file: Any = None

    def last_float(self, column: str, default: float = 0.0) -> float:
        """A number from the last kept row (``default`` if none)."""
        try:
            return float(self.last_row[column]) if self.last_row else default
        except (KeyError, TypeError, ValueError):
            return default

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (missing columns empty) and flush it to disk."""
        if self._file is None:
            self._file = self.path.open("a", newline="")
            self._writer = csv.DictWriter(self._file, fieldnames=self.fields, extrasaction="ignore")
        self._writer.writerow({k: csv_cell(row.get(k, ""), k in self.optional) for k in self.fields})
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ProgressLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def open_tensorboard(log_dir: str | Path, purge_step: int) -> Any:
    """A TensorBoard ``SummaryWriter``, or ``None`` with one info line when TensorBoard is not
    installed (it is the optional ``tensorboard`` extra)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        info(
            "tensorboard is not installed: no TensorBoard logs (pip install 'backpropamine-gym[tensorboard]'); "
            "the CSV log is written as usual"
        )
        return None
    return SummaryWriter(str(log_dir), purge_step=purge_step)


# ---------------------------------------------------------------- the loop


class Job(Protocol):
    """What a trainer gives :func:`run_loop`."""

    @property
    def updates_done(self) -> int:
        """Updates done so far (the checkpoint's count after a resume)."""
        ...

    def step(self) -> dict[str, Any] | list[dict[str, Any]] | None:
        """Do one update; return its log row (``reward_mean`` and the log's other columns), several
        rows, or ``None`` for an update that writes no row (a language model logs at validations)."""
        ...

    def save(self) -> None:
        """Write the checkpoint (atomically) of the state after ``updates_done`` updates."""
        ...


@dataclass
class RunResult:
    """How a run ended."""

    updates_done: int
    interrupted: bool
    recent_reward: float
    #: a resumed run already had the requested updates: nothing was trained or written
    nothing_to_do: bool = False
    #: the signal that stopped it (``SIGINT``, ``SIGTERM``), if one did
    signal_name: str | None = None
    #: (skipped, over how many updates): gradient steps skipped (norm above the learner's
    #: ``grad_skip``) in this call's last updates; ``None`` if the job logs no ``skipped_steps``
    recent_skipped: tuple[int, int] | None = None

    def summary(self, run_dir: str | Path) -> str:
        """The command line's last line: how it ended, updates, recent reward, skipped gradient
        steps (only if there were any), the folder."""
        status = "interrupted, checkpoint saved" if self.interrupted else "done"
        reward = (
            f"recent mean episode reward {self.recent_reward:.3f}"
            if math.isfinite(self.recent_reward)
            else "no episode finished in this call"
        )
        skipped = ""
        if self.recent_skipped is not None and self.recent_skipped[0] > 0:
            n, over = self.recent_skipped
            skipped = f", {n:,} gradient steps skipped in the last {over} updates (norm above grad_skip)"
        return f"{status}: {self.updates_done} updates, {reward}{skipped}, run folder {run_dir}"


def check_loop_args(updates: int, checkpoint_every: int) -> None:
    """Refuse a negative target or a checkpoint interval below 1 (before anything is written)."""
    if updates < 0:
        raise ValueError(f"updates must be >= 0, got {updates}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")


def run_loop(
    job: Job,
    run_dir: str | Path,
    updates: int,
    log: ProgressLog,
    checkpoint_every: int | None = 100,
    progress: bool = True,
    tensorboard: bool = True,
    reward_window: int = 100,
    wall_offset: float = 0.0,
    scalars: Sequence[str] = (),
    recent: deque[float] | None = None,
    unit: str = "upd",
) -> RunResult:
    """Run ``job`` until ``updates`` updates are done in total, or Ctrl-C / SIGTERM.

    Every update appends one row to ``log`` (the metrics, ``update`` and the run's training time
    ``wall_time``, continued from ``wall_offset``); every ``checkpoint_every`` updates, at the end
    and on a signal the job saves. A non-finite loss raised by the job propagates: the last good
    checkpoint on disk is kept as it is.

    Args:
        checkpoint_every: ``None``: the job saves itself (e.g. at epoch ends); the loop saves only
            at the end and on a signal.
        scalars: metrics also written to TensorBoard (as ``train/<name>``; NaNs skipped).
        recent: a window of recent rewards to continue (the job may fill it itself and return
            no ``reward_mean``); by default the loop keeps one over ``reward_mean``.
        unit: of the progress bar. A job with a ``postfix()`` method supplies the bar's postfix
            (e.g. tokens/s and perplexity) instead of the recent reward.
    """
    check_loop_args(updates, 1 if checkpoint_every is None else checkpoint_every)
    run_dir = Path(run_dir)
    writer = open_tensorboard(run_dir / TENSORBOARD_DIR, job.updates_done + 1) if tensorboard else None
    bar = None
    if progress:
        from tqdm import tqdm

        # a log file gets a line a minute, a terminal a redraw a second
        bar = tqdm(total=updates, initial=job.updates_done, unit=unit, dynamic_ncols=True,
                   mininterval=1.0 if sys.stderr.isatty() else 60.0)  # fmt: skip
    own_window = recent is None
    window: deque[float] = deque(maxlen=reward_window) if recent is None else recent
    # a learner that skips exploding steps can freeze; its reward alone does not show that
    skips: deque[int] = deque(maxlen=reward_window)
    interrupted, signal_name = False, None
    postfix = getattr(job, "postfix", None)
    start = time.perf_counter()
    try:
        with StopOnSignals() as stop:
            while job.updates_done < updates and not stop.requested:
                out = job.step()
                n = job.updates_done
                for metrics in [] if out is None else [out] if isinstance(out, dict) else out:
                    if own_window and not math.isnan(metrics.get("reward_mean", math.nan)):
                        window.append(metrics["reward_mean"])
                    if "skipped_steps" in metrics:
                        skips.append(int(metrics["skipped_steps"]))
                    row = {
                        **metrics,
                        "update": n,
                        "wall_time": round(wall_offset + time.perf_counter() - start, 3),
                    }
                    log.write(row)
                    if writer is not None:
                        for key in scalars:
                            value = row.get(key, math.nan)
                            if isinstance(value, (int, float)) and not math.isnan(value):
                                writer.add_scalar(f"train/{key}", value, n)
                if bar is not None:
                    bar.update(1)
                    if postfix is not None:
                        bar.set_postfix(postfix(), refresh=False)
                    elif window:
                        shown = {"reward": f"{sum(window) / len(window):.2f}"}
                        if sum(skips):
                            shown["skipped"] = f"{sum(skips)}"
                        bar.set_postfix(shown)
                if checkpoint_every is not None and n % checkpoint_every == 0:
                    job.save()
            interrupted, signal_name = stop.requested, stop.signal_name
        job.save()
    finally:
        log.close()
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    mean_recent = sum(window) / len(window) if window else math.nan
    recent_skipped = (sum(skips), len(skips)) if skips else None
    return RunResult(
        job.updates_done, interrupted, mean_recent, signal_name=signal_name, recent_skipped=recent_skipped
    )


def refuse_existing(run_dir: str | Path) -> None:
    """A new run must not overwrite a folder that holds one."""
    if (Path(run_dir) / CONFIG_FILE).exists():
        raise CheckpointError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
        )
