"""Training our plastic agents (plastic A2C / PPO) in a run folder of :mod:`bpm_agents.runs`.

The folder holds ``config.json`` (kind ``rl``), ``checkpoint.pt`` (weights, optimizer, every
generator), ``progress.csv`` (one row per update) and ``tb/``. Resuming reads the folder's config
and checkpoint and continues bit for bit.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path
from typing import Any, cast

import torch

from bpm_agents.a2c import A2CConfig, A2CTrainer
from bpm_agents.checkpoint import (
    CheckpointError,
    StopOnSignals,
    load_checkpoint,
    save_checkpoint,
    writable_dir,
)
from bpm_agents.runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    PROGRESS_FIELDS,
    PROGRESS_FILE,
    ProgressLog,
    RunResult,
    check_loop_args,
    info,
    open_tensorboard,
    read_run_meta,
    refuse_existing,
    run_loop,
    write_run_config,
)
from bpm_envs.batched import BatchedVectorEnv

__all__ = [
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "CSV_FIELDS",
    "PROGRESS_FILE",
    "RunResult",
    "info",
    "load_trainer",
    "open_tensorboard",
    "read_run_config",
    "train",
]

CSV_FIELDS = [
    *PROGRESS_FIELDS,
    "loss",
    "policy_loss",
    "value_loss",
    "entropy_term",
    "grad_norm",
    "modulator_abs_mean",
    "eta",
    "eta_e",
    "skipped_steps",
]
#: progress.csv columns of quantities that some rules lack (no eta without plasticity, no
#: modulator without neuromodulation): their cells are left empty for those rules
OPTIONAL_FIELDS = ("modulator_abs_mean", "eta", "eta_e")
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


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """``{"kind", "algo", "config"}`` of a run folder (any kind), or a :class:`CheckpointError`."""
    meta = read_run_meta(run_dir)
    return {"kind": meta.kind, "algo": meta.algo, "config": meta.config}


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


#: the signal handler (kept under its old name; it lives in checkpoint.py so the LM can use it
#: without importing the RL stack)
StopOnCtrlC = StopOnSignals


class _TrainerJob:
    """Plastic A2C / PPO as a :class:`~bpm_agents.runs.Job`."""

    def __init__(self, trainer: A2CTrainer, run_dir: Path) -> None:
        self.trainer = trainer
        self.path = run_dir / CHECKPOINT_FILE
        # make_vector_env builds the bpm/ task's native vector entry point, a BatchedVectorEnv
        self.episode_length = cast(BatchedVectorEnv, trainer.envs.unwrapped).episode_length

    @property
    def updates_done(self) -> int:
        return self.trainer.updates_done

    def step(self) -> dict[str, float]:
        metrics = self.trainer.update()
        n, batch = self.trainer.updates_done, self.trainer.config.batch_size
        return {**metrics, "episodes": n * batch, "env_steps": n * batch * self.episode_length}

    def save(self) -> None:
        config = self.trainer.config
        save_checkpoint(
            self.path,
            {
                "algo": algo_of(config),
                "env_id": config.env_id,
                "trainer": self.trainer.state_dict(),
                "config_json": json.dumps(config.to_dict()),
            },
        )


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
    command: list[str] | None = None,
) -> RunResult:
    """Train (or resume) the run in ``run_dir`` until ``updates`` updates are done in total.

    Args:
        config: the run's config; ignored when resuming (the folder's config is used).
        run_dir: output folder; must not hold a run unless ``resume``.
        updates: total number of updates of the run (not the number to add).
        resume: continue the run saved in ``run_dir``.
        checkpoint_every: save every K updates (and always at the end / on Ctrl-C).
        command: the command line, recorded in ``config.json``.
    Raises:
        CheckpointError: bad or missing run folder. NonFiniteLossError: diverged (the last good
        checkpoint is kept).
    """
    run_dir = Path(run_dir)
    check_loop_args(updates, checkpoint_every)
    if resume:
        trainer = load_trainer(run_dir, device)
        info(f"resuming {run_dir} from update {trainer.updates_done}")
        if trainer.updates_done >= updates:
            return RunResult(trainer.updates_done, False, math.nan, nothing_to_do=True)
        writable_dir(run_dir, "--out")
    else:
        refuse_existing(run_dir)
        assert config is not None
        algo = algo_of(config)
        trainer = trainer_classes()[algo][1](config, device)
        writable_dir(run_dir, "--out")
        write_run_config(run_dir, "rl", algo, trainer.config.to_dict(), command=command)
    job = _TrainerJob(trainer, run_dir)
    log = ProgressLog(
        run_dir / PROGRESS_FILE,
        CSV_FIELDS,
        optional=OPTIONAL_FIELDS,
        keep_through=trainer.updates_done if resume else None,
    )
    if not resume:
        job.save()  # update 0: a run folder is always loadable
    return run_loop(
        job,
        run_dir,
        updates,
        log,
        checkpoint_every=checkpoint_every,
        progress=progress,
        tensorboard=tensorboard,
        reward_window=reward_window,
        wall_offset=log.last_float("wall_time"),
        scalars=CSV_FIELDS[4:],
    )
