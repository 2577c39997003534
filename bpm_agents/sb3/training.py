"""Training SB3 runs: :func:`train` (one update = one SB3 rollout and training phase)."""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import VecEnv

from bpm_agents.checkpoint import writable_dir
from bpm_agents.runs import (
    CHECKPOINT_FILE,
    PROGRESS_FIELDS,
    PROGRESS_FILE,
    ProgressLog,
    RunResult,
    check_loop_args,
    info,
    refuse_existing,
    run_loop,
    write_run_config,
)
from bpm_agents.sb3.adapter import make_sb3_vec_env
from bpm_agents.sb3.checkpoints import (
    _config_body,
    _load,
    capture_resume_state,
    load_model_config,
    read_sb3_checkpoint,
    restore_resume_state,
    save_model,
)
from bpm_agents.sb3.config import SB3Config
from bpm_agents.sb3.models import build_model

CSV_FIELDS = [
    *PROGRESS_FIELDS,
    "loss",
    "policy_loss",
    "value_loss",
    "entropy_loss",
    "approx_kl",
    "clip_fraction",
    "explained_variance",
]
#: SB3 logger keys -> our CSV columns (A2C calls its policy loss ``policy_loss``, PPO
#: ``policy_gradient_loss``)
_LOG_KEYS = {
    "train/loss": "loss",
    "train/policy_gradient_loss": "policy_loss",
    "train/policy_loss": "policy_loss",
    "train/value_loss": "value_loss",
    "train/entropy_loss": "entropy_loss",
    "train/approx_kl": "approx_kl",
    "train/clip_fraction": "clip_fraction",
    "train/explained_variance": "explained_variance",
}


class _RolloutStats(BaseCallback):
    """Returns of the episodes that end during each rollout (vectorised running sums)."""

    def __init__(self, n_envs: int) -> None:
        super().__init__()
        self.running = np.zeros(n_envs, dtype=np.float64)
        self.finished: list[np.ndarray] = []

    def _on_step(self) -> bool:
        self.running += self.locals["rewards"]
        dones = np.asarray(self.locals["dones"], dtype=bool)
        if dones.any():
            self.finished.append(self.running[dones].copy())
            self.running[dones] = 0.0
        return True

    def pop_returns(self) -> np.ndarray:
        """Returns of the episodes finished since the last call."""
        out = np.concatenate(self.finished) if self.finished else np.zeros(0)
        self.finished = []
        return out


def _derived_seed(seed: int, updates_done: int) -> int:
    """A fresh seed for a resumed segment, so that resuming does not replay the same episodes."""
    return int(np.random.SeedSequence([seed, updates_done]).generate_state(1)[0] & 0x7FFFFFFF)


class _PeerJob:
    """An SB3 model as a :class:`~bpm_agents.runs.Job`: one update = one ``learn`` of one rollout."""

    def __init__(
        self, config: SB3Config, model: BaseAlgorithm, venv: VecEnv, stats: _RolloutStats, path: Path,
        episodes: int,
    ) -> None:  # fmt: skip
        self.config, self.model, self.venv, self.stats, self.path = config, model, venv, stats, path
        self.episodes = episodes
        self.recent: deque[float] = deque(maxlen=100)  # returns of the last 100 episodes

    @property
    def updates_done(self) -> int:
        return self.model.num_timesteps // self.config.steps_per_update

    def step(self) -> dict[str, float]:
        model = self.model
        model.learn(  # SB3 types log_interval as int, but its learn() takes None (no logging)
            self.config.steps_per_update,
            callback=self.stats,
            log_interval=None,  # type: ignore[arg-type]
            reset_num_timesteps=False,
        )
        returns = self.stats.pop_returns()
        self.episodes += len(returns)
        self.recent.extend(returns.tolist())
        row = {_LOG_KEYS[k]: float(v) for k, v in model.logger.name_to_value.items() if k in _LOG_KEYS}
        model.logger.dump()  # clears the values for the next update
        return {
            **row,
            "episodes": self.episodes,
            "env_steps": model.num_timesteps,
            "reward_mean": float(returns.mean()) if len(returns) else math.nan,
        }

    def save(self) -> None:
        save_model(self.model, self.path, capture_resume_state(self.model, self.venv))


def train(
    config: SB3Config | None,
    run_dir: str | Path,
    updates: int,
    resume: bool = False,
    checkpoint_every: int = 100,
    device: str | torch.device = "cpu",
    progress: bool = True,
    tensorboard: bool = True,
    command: list[str] | None = None,
) -> RunResult:
    """Train (or resume) the SB3 run in ``run_dir`` until ``updates`` updates are done in total.

    One update is one SB3 rollout of ``n_steps`` steps in each of ``n_envs`` envs followed by
    the algorithm's training phase. Ctrl-C or SIGTERM stops after the current update and saves.
    A resumed run continues bit for bit: the checkpoint also holds the global generators SB3
    samples from, the running episodes (replayed), the last observation and LSTM states
    (:func:`capture_resume_state`).

    Raises:
        CheckpointError: bad or missing run folder. ValueError: bad arguments.
    """
    run_dir = Path(run_dir)
    check_loop_args(updates, checkpoint_every)
    stats = None
    if resume:
        config = load_model_config(run_dir)
        saved = read_sb3_checkpoint(run_dir, device)
        updates_done = saved.num_timesteps // config.steps_per_update
        info(f"resuming {run_dir} from update {updates_done}")
        if updates_done >= updates:
            return RunResult(updates_done, False, math.nan, nothing_to_do=True)
        writable_dir(run_dir, "--out")
        if saved.resume is not None and saved.resume.get("num_timesteps") == saved.num_timesteps:
            venv = make_sb3_vec_env(config.env_id, config.n_envs, config.seed, config.env_kwargs)
            config, model, _ = _load(run_dir, device, venv)
            stats = _RolloutStats(config.n_envs)
            restore_resume_state(model, venv, saved.resume, stats)
        else:  # a checkpoint from before resume states were saved
            info(
                "the checkpoint holds no resume state: continuing with freshly seeded envs and "
                "generators (not bit for bit)"
            )
            seed = _derived_seed(config.seed, updates_done)
            venv = make_sb3_vec_env(config.env_id, config.n_envs, seed, config.env_kwargs)
            config, model, _ = _load(run_dir, device, venv)
            model.set_random_seed(seed)
    else:
        refuse_existing(run_dir)
        assert config is not None
        config = config.resolve()
        venv = make_sb3_vec_env(config.env_id, config.n_envs, config.seed, config.env_kwargs)
        model = build_model(config, venv, device)
        writable_dir(run_dir, "--out")
        write_run_config(run_dir, "sb3", config.algo, _config_body(config), command=command)
        save_model(model, run_dir / CHECKPOINT_FILE, capture_resume_state(model, venv))  # update 0
        updates_done = 0
    model.set_logger(Logger(folder=None, output_formats=[]))  # we write our own logs

    log = ProgressLog(run_dir / PROGRESS_FILE, CSV_FIELDS, keep_through=updates_done if resume else None)
    episodes = int(log.last_float("episodes"))
    job = _PeerJob(
        config, model, venv, stats or _RolloutStats(config.n_envs), run_dir / CHECKPOINT_FILE, episodes
    )
    try:
        return run_loop(
            job,
            run_dir,
            updates,
            log,
            checkpoint_every=checkpoint_every,
            progress=progress,
            tensorboard=tensorboard,
            wall_offset=log.last_float("wall_time"),
            scalars=CSV_FIELDS[4:],
            recent=job.recent,
        )
    finally:
        venv.close()
