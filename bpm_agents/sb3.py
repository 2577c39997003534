"""Stable-Baselines3 / sb3-contrib peers on the bpm/ tasks: vec-env adapter, training runs, loading.

Three algorithms, named as in ``train.py --algo``:

- ``ppo``: SB3 ``PPO`` with a feed-forward ``MlpPolicy``;
- ``a2c``: SB3 ``A2C`` with a feed-forward ``MlpPolicy`` (SB3 has no recurrent A2C);
- ``recurrent-ppo``: sb3-contrib ``RecurrentPPO`` with an LSTM (``MlpLstmPolicy``).

Environments. SB3 steps a :class:`~stable_baselines3.common.vec_env.VecEnv`. :class:`NativeVecEnv`
adapts our native batched twin (``gym.make_vec(..., vectorization_mode="vector_entry_point")``):
one numpy call steps all ``n_envs`` episodes, where SB3's ``DummyVecEnv`` would loop over
``n_envs`` single envs in Python. The adapter reproduces ``DummyVecEnv`` exactly (same seeds
``seed + i``, same observations, rewards, dones, ``terminal_observation`` and
``TimeLimit.truncated``; tested), so nothing SB3 sees changes, only the speed.

Run folder: the one layout of :mod:`bpm_agents.runs` (kind ``sb3``)::

    config.json      {"kind": "sb3", "algo": "ppo" | "a2c" | "recurrent-ppo", "config": SB3Config fields, ...}
    checkpoint.pt    weights, optimizer, step counters and resume state (bpm_agents.checkpoint)
    progress.csv     one row per update (rollout-and-update cycle)
    tb/              TensorBoard event files

Loading is safe: the model is rebuilt from ``config.json`` and gets the checkpoint's tensors
(``torch.load(weights_only=True)``); no pickled object is ever deserialised. (Folders of earlier
versions hold an SB3 ``checkpoint.zip`` instead; they still load, from its torch entries and JSON
counters only. Do not open foreign SB3 zips with ``PPO.load``: that unpickles, i.e. can run code.)
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import pickle
import random
import sys
import zipfile
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import VecEnv, VecMonitor

import bpm_envs  # noqa: F401  (registers the bpm/ environments)
from bpm_agents.checkpoint import (
    CheckpointError,
    DictConfig,
    load_checkpoint,
    load_failure,
    save_checkpoint,
)
from bpm_agents.config import Flags, add_run_flags, opt, set_threads
from bpm_agents.devices import resolve_device
from bpm_agents.runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    PROGRESS_FIELDS,
    PROGRESS_FILE,
    ProgressLog,
    RunResult,
    check_loop_args,
    info,
    read_run_meta,
    refuse_existing,
    run_loop,
    write_run_config,
)
from bpm_envs.extras import MissingExtraError, require

ALGOS = ("ppo", "a2c", "recurrent-ppo")
#: the checkpoint of folders written before the one checkpoint format (read only)
LEGACY_CHECKPOINT = "checkpoint.zip"
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

#: SB3's own defaults, except the rollout length of PPO (2048 -> 128 steps per env, so that
#: an update stays near a thousand env steps with 8 envs, as sb3-contrib's RecurrentPPO uses).
ALGO_DEFAULTS: dict[str, dict[str, Any]] = {
    "ppo": dict(
        n_steps=128,
        learning_rate=3e-4,
        gae_lambda=0.95,
        minibatch_size=64,
        n_epochs=10,
        clip_range=0.2,
        net_arch=[64, 64],
        lstm_hidden_size=None,
    ),
    "a2c": dict(
        n_steps=5,
        learning_rate=7e-4,
        gae_lambda=1.0,
        minibatch_size=None,
        n_epochs=None,
        clip_range=None,
        net_arch=[64, 64],
        lstm_hidden_size=None,
    ),
    "recurrent-ppo": dict(
        n_steps=128,
        learning_rate=3e-4,
        gae_lambda=0.95,
        minibatch_size=128,
        n_epochs=10,
        clip_range=0.2,
        net_arch=[64, 64],
        lstm_hidden_size=256,
    ),
}


def check_bpm_env_id(env_id: str) -> None:
    """Refuse ids other than the bpm/ tasks (the adapter needs their lock-step batched twin)."""
    bpm_envs.check_env_id(env_id, "the SB3 peers train on")


# ====================================================================== the vec-env adapter
class NativeVecEnv(VecEnv):
    """SB3 ``VecEnv`` over the native vector twin of a bpm/ env (lock-step, fixed-length episodes).

    The native env autoresets on the *next* step (Gymnasium's ``NEXT_STEP`` mode); SB3 wants the
    reset in the *same* step, with the final observation in ``info["terminal_observation"]``.
    Every bpm/ episode lasts exactly ``episode_length`` steps and all envs start together, so all
    envs end on the same step; the adapter then calls the native ``reset()`` once (each env's
    generator continues, as after ``DummyVecEnv``'s per-env ``reset()``).

    Args:
        env_id: a registered bpm/ id.
        n_envs: number of episodes stepped together.
        env_kwargs: options of the environment.
        task_info: also copy the task's per-step ``info`` into each env's info dict (slower; SB3
            only needs ``terminal_observation`` and ``TimeLimit.truncated``).
    """

    def __init__(
        self,
        env_id: str,
        n_envs: int,
        env_kwargs: dict[str, Any] | None = None,
        task_info: bool = False,
    ) -> None:
        check_bpm_env_id(env_id)
        self.native = gym.make_vec(
            env_id, num_envs=n_envs, vectorization_mode="vector_entry_point", **(env_kwargs or {})
        )
        self.task_info = task_info
        self.render_mode = None
        self._record = None
        super().__init__(
            self.native.num_envs,
            self.native.single_observation_space,
            self.native.single_action_space,
        )

    def reset(self) -> np.ndarray:
        seeds = None if all(s is None for s in self._seeds) else list(self._seeds)
        self._begin_record(seeds)
        obs, info = self.native.reset(seed=seeds)
        self.reset_infos = self._split_info(info) if self.task_info else [{} for _ in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        return obs

    def _begin_record(self, seeds: list[int] | None) -> None:
        """Remember how the episode about to start is drawn, and its actions from here on."""
        rngs = None if seeds is not None or self.native._rngs is None else self.native.get_rng_states()
        replayable = seeds is not None or rngs is not None
        self._record: dict[str, Any] | None = (
            {"seeds": seeds, "rng_states": rngs, "actions": []} if replayable else None
        )

    def episode_record(self) -> dict[str, Any] | None:
        """How to rebuild the envs' current state exactly: the seeds or generator states that
        started the running episodes and the actions taken since (``None`` before the first
        reset, or after an unseeded one). See :meth:`replay`."""
        if self._record is None:
            return None
        actions = self._record["actions"]
        return {
            "seeds": self._record["seeds"],
            "rng_states": self._record["rng_states"],
            "actions": torch.from_numpy(np.stack(actions))
            if actions
            else torch.zeros((0, self.num_envs), dtype=torch.int64),
        }

    def replay(self, record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, int]:
        """Put the envs back into the state :meth:`episode_record` described.

        Returns:
            (the current observation (n_envs, D), the rewards of the running episodes so far
            (n_envs,), the number of steps they have taken).
        """
        seeds, rngs = record["seeds"], record["rng_states"]
        if seeds is None:
            self.native.set_rng_states(rngs)
        self._begin_record(seeds)
        obs, _ = self.native.reset(seed=seeds)
        self._reset_seeds()
        total = np.zeros(self.num_envs, dtype=np.float64)
        actions = record["actions"].numpy()
        for a in actions:
            self._record["actions"].append(a.copy())
            obs, rewards, terminated, truncated, _ = self.native.step(a)
            if (terminated | truncated).any():
                raise CheckpointError("the saved episode record is longer than an episode")
            total += rewards
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return obs, total, len(actions)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(self.num_envs)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        if self._record is not None:
            self._record["actions"].append(self.native.task.check_actions(self._actions).copy())
        obs, rewards, terminated, truncated, info = self.native.step(self._actions)
        dones = terminated | truncated
        infos = self._split_info(info) if self.task_info else [{} for _ in range(self.num_envs)]
        if dones.any():
            if not dones.all():
                raise RuntimeError(
                    f"bpm/ episodes must end together (fixed length, lock-step); got dones={dones.tolist()}"
                )
            for i, inf in enumerate(infos):
                inf["terminal_observation"] = obs[i]
                inf["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            self._begin_record(None)
            obs, reset_info = self.native.reset()
            self.reset_infos = self._split_info(reset_info) if self.task_info else [{} for _ in infos]
        return obs, rewards.astype(np.float32), dones, infos

    def _split_info(self, info: dict[str, Any]) -> list[dict[str, Any]]:
        return [{k: v[i] for k, v in info.items() if not k.startswith("_")} for i in range(self.num_envs)]

    def close(self) -> None:
        self.native.close()

    @property
    def episode_length(self) -> int:
        return int(self.native.unwrapped.episode_length)

    # SB3 asks a few attributes of its envs; the native env is one object, so every index
    # sees the same value.
    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        if attr_name == "render_mode":
            return [None] * len(self._indices(indices))
        value = getattr(self.native.unwrapped, attr_name)
        return [value] * len(self._indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        setattr(self.native.unwrapped, attr_name, value)

    def env_method(self, method_name: str, *args: Any, indices: Any = None, **kwargs: Any) -> list[Any]:
        raise AttributeError(
            f"NativeVecEnv cannot call {method_name!r} per env: the envs are one batched object"
        )

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        return [False] * len(self._indices(indices))

    def _indices(self, indices: Any) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        if isinstance(indices, int):
            return [indices]
        return list(indices)


def make_sb3_vec_env(
    env_id: str, n_envs: int, seed: int | None = None, env_kwargs: dict[str, Any] | None = None
) -> VecMonitor:
    """``n_envs`` native envs for SB3, seeded ``seed + i`` at the first reset, with episode stats."""
    venv = NativeVecEnv(env_id, n_envs, env_kwargs)
    if seed is not None:
        venv.seed(seed)
    return VecMonitor(venv)


# ====================================================================== config and model
@dataclass(frozen=True)
class SB3Config(DictConfig):
    """Hyper-parameters of an SB3 run. ``None`` fields take the algorithm's default (``resolve``)."""

    algo: str = field(default="ppo", metadata=opt("the SB3 algorithm", choices=ALGOS, cli=False))
    env_id: str = field(
        default="bpm/CueReward-v0",
        metadata=opt(f"environment id: {', '.join(bpm_envs.ENV_IDS)}", flag="env"),
    )
    env_kwargs: dict[str, Any] = field(
        default_factory=dict,
        metadata=opt("JSON options for the environment, e.g. '{\"fixed_cues\": true}'"),
    )
    seed: int = field(default=0, metadata=opt("seed of weights, environments and action sampling"))
    n_envs: int = field(default=8, metadata=opt("environments stepped together"))
    n_steps: int | None = field(default=None, metadata=opt("rollout steps per env and update"))
    learning_rate: float | None = field(default=None, metadata=opt("learning rate", flag="lr"))
    gamma: float = field(default=0.99, metadata=opt("discount"))
    gae_lambda: float | None = field(default=None, metadata=opt("GAE lambda"))
    ent_coef: float = field(
        default=0.0,
        metadata=opt(
            "coefficient of the entropy bonus (SB3's true entropy, not our sum-of-squares)",
            flag="entropy_coef",
            aliases=["ent_coef"],
        ),
    )
    vf_coef: float = field(
        default=0.5, metadata=opt("value loss coefficient", flag="value_coef", aliases=["vf_coef"])
    )
    max_grad_norm: float = field(
        default=0.5, metadata=opt("gradient-norm clip", flag="grad_clip", aliases=["max_grad_norm"])
    )
    minibatch_size: int | None = field(default=None, metadata=opt("PPO minibatch size in steps"))
    n_epochs: int | None = field(default=None, metadata=opt("PPO epochs per update"))
    clip_range: float | None = field(default=None, metadata=opt("PPO clip range"))
    net_arch: list[int] | None = field(
        default=None, metadata=opt("hidden layer sizes of the policy and value MLPs, e.g. '64,64'")
    )
    lstm_hidden_size: int | None = field(default=None, metadata=opt("LSTM units of recurrent-ppo"))

    def resolve(self) -> SB3Config:
        """Fill the ``None`` fields from :data:`ALGO_DEFAULTS` and validate everything."""
        if self.algo not in ALGOS:
            raise ValueError(f"unknown algo {self.algo!r}; allowed: {', '.join(ALGOS)}")
        check_bpm_env_id(self.env_id)
        defaults = ALGO_DEFAULTS[self.algo]
        for name in ("minibatch_size", "n_epochs", "clip_range", "lstm_hidden_size"):
            if defaults[name] is None and getattr(self, name) is not None:
                raise ValueError(f"{name} does not apply to algo {self.algo!r}")
        cfg = replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})
        cfg = replace(cfg, net_arch=[int(n) for n in cfg.net_arch])
        for name in ("n_envs", "n_steps", "minibatch_size", "n_epochs", "lstm_hidden_size"):
            value = getattr(cfg, name)
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if any(n < 1 for n in cfg.net_arch):
            raise ValueError(f"net_arch layer sizes must be >= 1, got {cfg.net_arch}")
        for name in ("gamma", "gae_lambda"):
            if not 0 <= getattr(cfg, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(cfg, name)!r}")
        for name in ("learning_rate", "max_grad_norm") + (
            ("clip_range",) if cfg.clip_range is not None else ()
        ):
            if not 0 < getattr(cfg, name) <= torch.finfo(torch.float32).max:
                raise ValueError(
                    f"{name} must be a finite number > 0 (at most 3.4e38, the float32 range), "
                    f"got {getattr(cfg, name)!r}"
                )
        for name in ("ent_coef", "vf_coef"):
            if not getattr(cfg, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)!r}")
        if not isinstance(cfg.env_kwargs, dict):
            raise ValueError(f"env_kwargs must be a dict, got {cfg.env_kwargs!r}")
        return cfg

    @property
    def steps_per_update(self) -> int:
        """Env steps of one rollout-and-update cycle: ``n_envs * n_steps``."""
        assert self.n_steps is not None, "resolve() the config first"
        return self.n_envs * self.n_steps


def build_model(config: SB3Config, env: VecEnv, device: str | torch.device = "cpu") -> BaseAlgorithm:
    """A fresh SB3 model of a resolved ``config`` on ``env``, weights seeded by ``config.seed``.

    SB3 seeds Python's, numpy's and torch's *global* generators (``set_random_seed``); that is
    how SB3 samples actions, so a run is reproducible only as a whole process.
    """
    common = dict(
        learning_rate=config.learning_rate,
        n_steps=config.n_steps,
        gamma=config.gamma,
        gae_lambda=config.gae_lambda,
        ent_coef=config.ent_coef,
        vf_coef=config.vf_coef,
        max_grad_norm=config.max_grad_norm,
        seed=config.seed,
        device=device,
        verbose=0,
    )
    arch = list(config.net_arch)
    if config.algo == "ppo":
        from stable_baselines3 import PPO

        return PPO(
            "MlpPolicy",
            env,
            batch_size=config.minibatch_size,
            n_epochs=config.n_epochs,
            clip_range=config.clip_range,
            policy_kwargs=dict(net_arch=arch),
            **common,
        )
    if config.algo == "a2c":
        from stable_baselines3 import A2C

        return A2C("MlpPolicy", env, policy_kwargs=dict(net_arch=arch), **common)
    if config.algo == "recurrent-ppo":
        RecurrentPPO = require("sb3_contrib", "--algo recurrent-ppo").RecurrentPPO

        return RecurrentPPO(
            "MlpLstmPolicy",
            env,
            batch_size=config.minibatch_size,
            n_epochs=config.n_epochs,
            clip_range=config.clip_range,
            policy_kwargs=dict(net_arch=arch, lstm_hidden_size=config.lstm_hidden_size),
            **common,
        )
    raise ValueError(f"unknown algo {config.algo!r}; allowed: {', '.join(ALGOS)}")


def count_parameters(model: BaseAlgorithm) -> int:
    """Trainable parameters of the model's policy (actor, critic and any LSTM)."""
    return sum(p.numel() for p in model.policy.parameters() if p.requires_grad)


# ====================================================================== saving and loading
#: the entry of a legacy checkpoint.zip that held the resume state
RESUME_ENTRY = "bpm_resume.pt"


def save_model(model: BaseAlgorithm, path: str | Path, resume_state: dict[str, Any] | None = None) -> None:
    """Save ``model`` as one checkpoint of :mod:`bpm_agents.checkpoint` (atomic, tensors only).

    It holds SB3's ``get_parameters()`` (policy weights and optimizer state), the step counters
    and ``resume_state`` (see :func:`capture_resume_state`), so they are always replaced together.
    """
    save_checkpoint(
        path,
        {
            "kind": "sb3",
            "parameters": model.get_parameters(),
            "num_timesteps": int(model.num_timesteps),
            "n_updates": int(model._n_updates),
            "resume": resume_state,
        },
    )


def _native(venv: VecEnv) -> NativeVecEnv:
    inner = venv
    while not isinstance(inner, NativeVecEnv):
        inner = inner.venv  # type: ignore[attr-defined]
    return inner


def capture_resume_state(model: BaseAlgorithm, venv: VecEnv) -> dict[str, Any]:
    """Everything besides weights and optimizer that the next SB3 update depends on.

    SB3 samples actions from torch's global generator and shuffles minibatches with numpy's;
    ``learn`` continues from the last observation and episode starts (and RecurrentPPO from its
    last LSTM states); the envs are mid-episode. The envs are captured as the start of their
    running episodes plus the actions since (:meth:`NativeVecEnv.episode_record`), replayed on
    resume. The rollout buffer is refilled from scratch at every update, so it is not needed.
    """
    keys, pos, has_gauss, cached = np.random.get_state()[1:]
    py_version, py_state, py_gauss = random.getstate()
    lstm = getattr(model, "_last_lstm_states", None)
    return {
        "num_timesteps": int(model.num_timesteps),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy_rng": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python_rng": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "episode_record": _native(venv).episode_record() if model._last_obs is not None else None,
        "last_episode_starts": (
            None
            if model._last_episode_starts is None
            else torch.from_numpy(np.asarray(model._last_episode_starts, dtype=bool))
        ),
        "lstm_states": None if lstm is None else [t.detach().cpu().clone() for pair in lstm for t in pair],
    }


def _read_legacy_resume_state(path: Path) -> dict[str, Any] | None:
    """The :data:`RESUME_ENTRY` of a legacy checkpoint zip (``weights_only`` load), or ``None``."""
    try:
        with zipfile.ZipFile(path) as zf:
            if RESUME_ENTRY not in zf.namelist():
                return None
            data = zf.read(RESUME_ENTRY)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable SB3 checkpoint: {exc}") from None
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # bad bytes in our own entry
        reason = "contains disallowed objects" if isinstance(exc, pickle.UnpicklingError) else "is corrupted"
        raise CheckpointError(f"{path}: its resume state {RESUME_ENTRY} {reason}") from None


def restore_resume_state(
    model: BaseAlgorithm, venv: VecEnv, state: dict[str, Any], stats: _RolloutStats | None = None
) -> None:
    """Undo :func:`capture_resume_state`: generators, envs, last observation, LSTM states."""
    try:
        record = state["episode_record"]
        if record is not None:
            obs, rewards_so_far, steps = _native(venv).replay(record)
            monitor = venv if isinstance(venv, VecMonitor) else None
            if monitor is not None:  # the episode statistics SB3 logs count from the episode start
                monitor.episode_returns = rewards_so_far.astype(np.float32)
                monitor.episode_lengths = np.full(venv.num_envs, steps, dtype=np.int32)
            if stats is not None:
                stats.running = rewards_so_far.copy()
            model._last_obs = obs
            model._last_episode_starts = state["last_episode_starts"].numpy().copy()
        if state["lstm_states"] is not None:
            from sb3_contrib.common.recurrent.type_aliases import RNNStates

            t = [x.to(model.device) for x in state["lstm_states"]]
            model._last_lstm_states = RNNStates((t[0], t[1]), (t[2], t[3]))
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        rng = state["numpy_rng"]
        np.random.set_state(
            (
                "MT19937",
                rng["keys"].numpy().astype(np.uint32),
                rng["pos"],
                rng["has_gauss"],
                rng["cached_gaussian"],
            )
        )
        py = state["python_rng"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(f"the checkpoint's resume state does not fit this run: {exc}") from None


def _legacy_zip_counters(path: Path) -> dict[str, int]:
    """The plain-JSON step counters of a legacy SB3 zip, read without unpickling anything."""
    try:
        with zipfile.ZipFile(path) as zf:
            data = json.loads(zf.read("data"))
        return {"num_timesteps": int(data["num_timesteps"]), "n_updates": int(data["_n_updates"])}
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable SB3 checkpoint: {exc}") from None


@dataclass
class SB3Checkpoint:
    """What a run folder's checkpoint holds (either format)."""

    parameters: Any  # a dict of state dicts, or the legacy zip's path (SB3 reads its torch entries)
    num_timesteps: int
    n_updates: int
    resume: dict[str, Any] | None


def read_sb3_checkpoint(run_dir: str | Path, device: str | torch.device = "cpu") -> SB3Checkpoint:
    """The checkpoint of an SB3 run folder: ``checkpoint.pt``, or a legacy ``checkpoint.zip``.

    Raises:
        CheckpointError: missing, corrupted or foreign file.
    """
    run_dir = Path(run_dir)
    path, legacy = run_dir / CHECKPOINT_FILE, run_dir / LEGACY_CHECKPOINT
    if not path.is_file() and legacy.is_file():
        counters = _legacy_zip_counters(legacy)
        return SB3Checkpoint(str(legacy), counters["num_timesteps"], counters["n_updates"],
                             _read_legacy_resume_state(legacy))  # fmt: skip
    data = load_checkpoint(path, map_location=device)
    try:
        if data.get("kind") != "sb3":
            raise KeyError("kind")
        return SB3Checkpoint(data["parameters"], int(data["num_timesteps"]), int(data["n_updates"]),
                             data.get("resume"))  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} is not an SB3 peer's checkpoint (no {exc})") from None


def load_model(
    run_dir: str | Path, device: str | torch.device = "cpu", env: VecEnv | None = None
) -> tuple[SB3Config, BaseAlgorithm]:
    """Rebuild the model of one of *our* SB3 run folders, without unpickling anything.

    The model is built from ``config.json``; its weights, optimizer state and step counters come
    from the checkpoint (a ``weights_only`` load). ``env`` defaults to a one-env
    :class:`NativeVecEnv` (enough to act).

    Raises:
        CheckpointError: not an SB3 run folder of ours, or a missing / corrupted checkpoint.
    """
    config, model, _ = _load(run_dir, device, env)
    return config, model


def _load(
    run_dir: str | Path, device: str | torch.device, env: VecEnv | None
) -> tuple[SB3Config, BaseAlgorithm, SB3Checkpoint]:
    config = load_model_config(run_dir)
    saved = read_sb3_checkpoint(run_dir, device)
    if env is None:
        env = VecMonitor(NativeVecEnv(config.env_id, 1, config.env_kwargs))
    model = build_model(config, env, device)
    try:
        model.set_parameters(saved.parameters, exact_match=True, device=device)
    except Exception as exc:  # torch / zipfile raise many types for bad bytes; all mean "unusable"
        if isinstance(exc, pickle.UnpicklingError) and isinstance(saved.parameters, str):
            reason = load_failure(saved.parameters, exc)  # never pass on "weights_only=False" advice
        else:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(
            f"the checkpoint of {run_dir} could not be loaded into a {config.algo} model: {reason}"
        ) from None
    model.num_timesteps = saved.num_timesteps
    model._n_updates = saved.n_updates
    return config, model, saved


class SB3Agent:
    """A trained SB3 model behind the same acting contract as our ``PlasticActorCritic.predict``.

    Attributes:
        algo, env_id, env_kwargs: from the run's config.
        recurrent: whether ``predict`` returns and expects a state (RecurrentPPO's LSTM ``(h, c)``,
            each ``(n_layers, B, H)``).
        model: the SB3 model.
    """

    def __init__(self, config: SB3Config, model: BaseAlgorithm) -> None:
        self.config = config
        self.model = model
        self.algo = config.algo
        self.env_id = config.env_id
        self.env_kwargs = dict(config.env_kwargs)
        self.recurrent = config.algo == "recurrent-ppo"

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """SB3's contract: observation (B, D) or (D,) -> actions (B,) (or a scalar), next state.

        For ``recurrent-ppo`` pass the returned state back at the next call and
        ``episode_start`` (B,) bool, True where an episode starts (its LSTM state is zeroed);
        ``state=None`` means all-zero. Feed-forward models return ``None`` as state.
        """
        return self.model.predict(
            observation, state=state, episode_start=episode_start, deterministic=deterministic
        )


def load_agent(run_dir: str | Path, device: str | torch.device = "cpu") -> SB3Agent:
    """Load the SB3 agent of a run folder for acting (see :class:`SB3Agent`); only our own folders."""
    config, model = load_model(run_dir, device)
    model.policy.set_training_mode(False)
    return SB3Agent(config, model)


# ====================================================================== training
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
        model.learn(
            self.config.steps_per_update, callback=self.stats, log_interval=None, reset_num_timesteps=False
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
        run_dir.mkdir(parents=True, exist_ok=True)
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


def _config_body(config: SB3Config) -> dict[str, Any]:
    body = config.to_dict()
    del body["algo"]  # lives at the top level of config.json
    return body


def load_model_config(run_dir: str | Path) -> SB3Config:
    """The resolved :class:`SB3Config` of an SB3 run folder."""
    meta = read_run_meta(run_dir)
    if meta.algo not in ALGOS:
        raise CheckpointError(
            f"{run_dir} was trained with {meta.algo!r}, not an SB3 algorithm ({', '.join(ALGOS)})"
        )
    try:
        body = meta.config
        if not isinstance(body, dict):
            raise ValueError(f"SB3Config must be a JSON object of settings, got {json.dumps(body)}")
        return SB3Config.from_dict({"algo": meta.algo, **body}).resolve()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{Path(run_dir) / CONFIG_FILE} holds a bad SB3 config: {exc}") from None


# ====================================================================== command line
#: the --algo choices of ``bpm train`` that are our own plastic agents, not SB3's
PLASTIC_ALGOS = ("plastic-a2c", "plastic-ppo")
#: dest prefix of the plastic agents' flags, accepted so the message can say why they are refused
_PLASTIC = "plastic__"


def build_parser(
    prog: str = "bpm train --algo ppo|a2c|recurrent-ppo",
) -> tuple[argparse.ArgumentParser, Flags]:
    """The parser of ``bpm train --algo ppo|a2c|recurrent-ppo``, and its generated flags."""
    from bpm_agents.ppo import PPOConfig

    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Train a Stable-Baselines3 PPO / A2C (feed-forward MLP) or sb3-contrib RecurrentPPO "
            "(LSTM) on a bpm/ Gymnasium environment. Writes config.json, checkpoint.zip, "
            "progress.csv and TensorBoard logs to --out. Defaults are SB3's except --n-envs and, "
            "for PPO, --n-steps."
        ),
    )
    p.add_argument(
        "--algo",
        default=None,
        choices=[*PLASTIC_ALGOS, *ALGOS],
        help="the SB3 algorithm (required unless --resume, which reads it from the run folder)",
    )
    add_run_flags(
        p,
        updates="total number of rollout-and-update cycles of the run (one = --n-envs x --n-steps env steps)",
        resume="continue the run in --out bit for bit (the checkpoint also holds the global generators, the running episodes, the last observation and LSTM states). The saved config is kept: only --updates, --device, --checkpoint-every, --threads and the logging flags apply; a hyper-parameter flag whose value differs from the saved one is refused (exit 2). With --updates at or below the updates done, nothing is trained (exit 0)",
    )
    flags = Flags()
    g = p.add_argument_group("SB3 hyper-parameters (default: SB3's per algorithm)")
    per_algo = {algo: {**SB3Config().to_dict(), **ALGO_DEFAULTS[algo]} for algo in ALGOS}
    flags.add(g, SB3Config, defaults=per_algo)
    taken = {spec.flag for spec in flags.flags.values()} | {
        "--" + a.lstrip("-") for s in flags.flags.values() for a in s.aliases
    }
    plastic = [
        f.name
        for f in dataclasses.fields(PPOConfig)
        if "--" + Flags._metadata(PPOConfig, f.name).get("flag", f.name).replace("_", "-") not in taken
    ]
    flags.add(p, PPOConfig, fields=plastic, hidden=True, dest_prefix=_PLASTIC)
    return p, flags


def train_main(argv: list[str], prog: str = "bpm train") -> int:
    """``bpm train --algo ppo|a2c|recurrent-ppo ...``: exit 0 done, 130 interrupted, 2 on errors."""
    parser, flags = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        plastic_only = flags.given(args, prefix=_PLASTIC)
        if plastic_only:
            names = ", ".join(flags.flag_of(k, _PLASTIC) for k in plastic_only)
            raise ValueError(f"{names}: only for --algo plastic-a2c or plastic-ppo (our plastic agents)")
        set_threads(args.threads)
        if args.algo in PLASTIC_ALGOS:
            raise ValueError(f"--algo {args.algo} is trained by our own trainer, not by bpm_agents.sb3")
        given = flags.given(args)
        config = None
        if args.resume:
            saved = load_model_config(args.out)
            if args.algo is not None and args.algo != saved.algo:
                raise ValueError(f"{args.out} was trained with --algo {saved.algo}, not {args.algo}")
            conflicts = flags.conflicts(given, saved.to_dict())
            if conflicts:
                raise ValueError(
                    f"--resume keeps the saved config of {args.out}, but these flags differ "
                    f"from it: {'; '.join(conflicts)}. Drop them, or start a new run with "
                    "another --out"
                )
        else:
            if args.algo is None:
                raise ValueError(f"--algo is required for a new run; allowed: {', '.join(ALGOS)}")
            config = SB3Config(algo=args.algo, **given).resolve()
            # fail before writing anything if the env options are wrong
            NativeVecEnv(config.env_id, 1, config.env_kwargs).close()
        result = train(
            config,
            args.out,
            args.updates,
            resume=args.resume,
            checkpoint_every=args.checkpoint_every,
            device=resolve_device(args.device),
            progress=args.progress,
            tensorboard=args.tensorboard,
            command=[*prog.split(), *argv],
        )
    except (ValueError, TypeError, CheckpointError, MissingExtraError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if result.nothing_to_do:
        print(
            f"nothing to do: run already has {result.updates_done} updates (asked for --updates {args.updates})"
        )
        return 0
    status = "interrupted, checkpoint saved" if result.interrupted else "done"
    print(
        f"{status}: {result.updates_done} updates, recent mean episode reward "
        f"{result.recent_reward:.3f}, run folder {args.out}"
    )
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:]))
