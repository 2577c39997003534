"""A training run on disk: config, checkpoints, CSV and TensorBoard logs, resume, Ctrl-C.

Layout of a run folder::

    config.json      the full resolved config (written once, atomically)
    checkpoint.pt    latest training state (weights, optimizer, all generators), atomic
    progress.csv     one row per update
    tb/              TensorBoard event files

Resuming reads ``config.json`` and ``checkpoint.pt`` and continues bit for bit; rows of
``progress.csv`` after the checkpoint (work lost by an interruption) are dropped first.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import math
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from bpm_agents.a2c import A2CConfig, A2CTrainer, NonFiniteLossError
from bpm_agents.checkpoint import (
    CheckpointError,
    StopOnSignals,
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
    save_checkpoint,
)
from bpm_envs.batched import BatchedVectorEnv

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
PROGRESS_FILE = "progress.csv"
CSV_FIELDS = [
    "update",
    "episodes",
    "env_steps",
    "wall_time",
    "reward_mean",
    "loss",
    "policy_loss",
    "value_loss",
    "entropy_term",
    "grad_norm",
    "modulator_abs_mean",
    "eta",
    "eta_e",
]
ALGO = "plastic-a2c"


def trainer_classes() -> dict[str, tuple[type[A2CConfig], type[A2CTrainer]]]:
    """The algorithms of our own trainer: name -> (config class, trainer class)."""
    from bpm_agents.ppo import PlasticPPOTrainer, PPOConfig

    return {ALGO: (A2CConfig, A2CTrainer), "plastic-ppo": (PPOConfig, PlasticPPOTrainer)}


def algo_of(config: A2CConfig) -> str:
    """The ``algo`` name a config trains with (``plastic-a2c`` or ``plastic-ppo``)."""
    for name, (config_cls, _) in trainer_classes().items():
        if type(config) is config_cls:
            return name
    raise TypeError(f"no trainer for config type {type(config).__name__}")


@dataclass
class RunResult:
    """How a call to :func:`train` ended."""

    updates_done: int
    interrupted: bool
    recent_reward: float
    #: a resumed run already had ``updates`` updates: nothing was trained or written
    nothing_to_do: bool = False


def info(message: str) -> None:
    """One line for the user on stderr (stdout holds the result line)."""
    print(message, file=sys.stderr, flush=True)


def explicit_options(parser: argparse.ArgumentParser, argv: list[str]) -> dict[str, Any]:
    """The options given on the command line ``argv`` (dest -> parsed value), defaults left out."""
    quiet = copy.deepcopy(parser)
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    known, _ = quiet.parse_known_args(argv)
    return vars(known)


def resume_conflicts(given: dict[str, Any], saved: dict[str, Any], fields: dict[str, str]) -> list[str]:
    """Flags given with a resume whose value differs from the run's saved config.

    Args:
        given: options from :func:`explicit_options`, already converted to config values.
        saved: the run's config (field -> value).
        fields: option dest -> config field, for the options that are part of the config.
    Returns:
        one phrase per conflicting flag, e.g. ``--lr 0.001 (saved: 0.0001)``.
    """
    out = []
    for dest, name in fields.items():
        if dest in given and given[dest] != saved.get(name):
            flag = "--" + dest.replace("_", "-")
            value = given[dest]
            shown = json.dumps(value) if isinstance(value, (dict, list)) else value
            out.append(f"{flag} {shown} (saved: {json.dumps(saved.get(name))})")
    return out


def open_tensorboard(log_dir: Path, purge_step: int) -> Any:
    """A TensorBoard ``SummaryWriter``, or ``None`` with one info line when TensorBoard is not
    installed (it is the optional ``tensorboard`` extra)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        info(
            "tensorboard is not installed: no TensorBoard logs (pip install 'backpropamine-gym[tensorboard]'); "
            "progress.csv is written as usual"
        )
        return None
    return SummaryWriter(str(log_dir), purge_step=purge_step)


#: progress.csv columns of quantities that some rules lack (no eta without plasticity, no
#: modulator without neuromodulation); their cells are left empty for those rules
OPTIONAL_FIELDS = ("modulator_abs_mean", "eta", "eta_e")


def csv_cell(key: str, value: Any) -> Any:
    """A progress.csv cell: empty for a quantity the rule does not have.

    The trainer reports such a quantity as NaN; a real eta, eta_e or modulator that became NaN
    would have made the loss NaN, which stops the run before any row is written.
    """
    if key in OPTIONAL_FIELDS and isinstance(value, float) and math.isnan(value):
        return ""
    return value


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a run folder, or a :class:`CheckpointError` saying what is wrong."""
    path = Path(run_dir) / CONFIG_FILE
    if not Path(run_dir).is_dir():
        raise CheckpointError(f"run folder {run_dir} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder: {CONFIG_FILE} is missing")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is corrupted: {exc}") from None
    if not isinstance(data, dict) or "algo" not in data or "config" not in data:
        raise CheckpointError(f"{path} is not a backpropamine-gym run config")
    return data


def load_trainer(run_dir: str | Path, device: str | torch.device = "cpu") -> A2CTrainer:
    """Rebuild the trainer of a run folder from its config and latest checkpoint."""
    meta = read_run_config(run_dir)
    algos = trainer_classes()
    if meta["algo"] not in algos:
        raise CheckpointError(f"{run_dir} was trained with {meta['algo']!r}, not one of {', '.join(algos)}")
    config_cls, trainer_cls = algos[meta["algo"]]
    try:
        config = config_cls.from_dict(meta["config"]).resolve()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{Path(run_dir) / CONFIG_FILE} holds a bad config: {exc}") from None
    trainer = trainer_cls(config, device)
    state = load_checkpoint(Path(run_dir) / CHECKPOINT_FILE, map_location=trainer.device)
    if state.get("env_id") != trainer.config.env_id:
        raise CheckpointError(
            f"checkpoint is for env {state.get('env_id')!r} but the run config says {trainer.config.env_id!r}"
        )
    try:
        trainer.load_state_dict(state["trainer"])
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"checkpoint does not fit the run's policy: {exc}") from None
    return trainer


def _truncate_progress(path: Path, last_update: int) -> float:
    """Keep only the CSV rows up to ``last_update`` (atomic rewrite); return the last kept wall time.

    A resumed run continues its ``wall_time`` column from there, so the column stays the training
    time of the whole run.
    """
    if not path.exists():
        return 0.0
    with path.open(newline="") as f:
        rows = [
            r for r in csv.DictReader(f) if r.get("update", "").isdigit() and int(r["update"]) <= last_update
        ]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, out.getvalue())
    try:
        return float(rows[-1]["wall_time"]) if rows else 0.0
    except (KeyError, ValueError):
        return 0.0


#: the signal handler (kept under its old name; it lives in checkpoint.py so the LM can use it
#: without importing the RL stack)
StopOnCtrlC = StopOnSignals


def train(
    config: A2CConfig | None,
    run_dir: str | Path,
    updates: int,
    resume: bool = False,
    checkpoint_every: int = 100,
    device: str | torch.device = "cpu",
    progress: bool = True,
    tensorboard: bool = True,
    reward_window: int = 100,
) -> RunResult:
    """Train (or resume) the run in ``run_dir`` until ``updates`` updates are done in total.

    Args:
        config: the run's config; ignored when resuming (the folder's config is used).
        run_dir: output folder; must not hold a run unless ``resume``.
        updates: total number of updates of the run (not the number to add).
        resume: continue the run saved in ``run_dir``.
        checkpoint_every: save every K updates (and always at the end / on Ctrl-C).
    Raises:
        CheckpointError: bad or missing run folder. NonFiniteLossError: diverged (the last good
        checkpoint is kept).
    """
    run_dir = Path(run_dir)
    if updates < 0:
        raise ValueError(f"updates must be >= 0, got {updates}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    if resume:
        trainer = load_trainer(run_dir, device)
        info(f"resuming {run_dir} from update {trainer.updates_done}")
        if trainer.updates_done >= updates:
            return RunResult(trainer.updates_done, False, math.nan, nothing_to_do=True)
    else:
        if (run_dir / CONFIG_FILE).exists():
            raise CheckpointError(
                f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
            )
        assert config is not None
        algo = algo_of(config)
        trainer = trainer_classes()[algo][1](config, device)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / CONFIG_FILE, {"algo": algo, "config": trainer.config.to_dict()})

    progress_path = run_dir / PROGRESS_FILE
    wall_offset = _truncate_progress(progress_path, trainer.updates_done)
    if not progress_path.exists():
        atomic_write_text(progress_path, ",".join(CSV_FIELDS) + "\n")

    def save() -> None:
        save_checkpoint(
            run_dir / CHECKPOINT_FILE,
            {
                "algo": algo_of(trainer.config),
                "env_id": trainer.config.env_id,
                "trainer": trainer.state_dict(),
                "config_json": json.dumps(trainer.config.to_dict()),
            },
        )

    if not resume:
        save()  # update 0: a run folder is always loadable

    writer = open_tensorboard(run_dir / "tb", trainer.updates_done + 1) if tensorboard else None

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=updates, initial=trainer.updates_done, unit="upd", dynamic_ncols=True)

    recent: deque[float] = deque(maxlen=reward_window)
    # make_vector_env builds the bpm/ task's native vector entry point, a BatchedVectorEnv
    episode_length = cast(BatchedVectorEnv, trainer.envs.unwrapped).task.episode_length
    interrupted = False
    start = time.perf_counter()
    try:
        with StopOnCtrlC() as stop, progress_path.open("a", newline="") as log:
            csv_writer = csv.DictWriter(log, fieldnames=CSV_FIELDS)
            while trainer.updates_done < updates and not stop.requested:
                metrics = trainer.update()
                n = trainer.updates_done
                recent.append(metrics["reward_mean"])
                row = {
                    **metrics,
                    "episodes": n * trainer.config.batch_size,
                    "env_steps": n * trainer.config.batch_size * episode_length,
                    "wall_time": round(wall_offset + time.perf_counter() - start, 3),
                }
                csv_writer.writerow({k: csv_cell(k, row[k]) for k in CSV_FIELDS})
                log.flush()
                if writer is not None:
                    for key in CSV_FIELDS[4:]:
                        if not math.isnan(row[key]):
                            writer.add_scalar(f"train/{key}", row[key], n)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(reward=f"{sum(recent) / len(recent):.2f}")
                if n % checkpoint_every == 0:
                    save()
            interrupted = stop.requested
    except NonFiniteLossError:
        raise  # the last good checkpoint on disk is kept as it is
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    save()
    mean_recent = sum(recent) / len(recent) if recent else math.nan
    return RunResult(trainer.updates_done, interrupted, mean_recent)
