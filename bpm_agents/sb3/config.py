"""Hyper-parameters of the SB3 peers: :data:`ALGOS`, :data:`ALGO_DEFAULTS`, :class:`SB3Config`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

import bpm_envs
from bpm_agents.checkpoint import DictConfig
from bpm_agents.config import opt
from bpm_agents.sb3.adapter import check_bpm_env_id
from bpm_envs.checks import require_int

ALGOS = ("ppo", "a2c", "recurrent-ppo")

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
        arch = cfg.net_arch
        assert arch is not None  # every algo has a default
        arch = [int(n) for n in arch]
        cfg = replace(cfg, net_arch=arch)
        for name in ("n_envs", "n_steps", "minibatch_size", "n_epochs", "lstm_hidden_size"):
            if getattr(cfg, name) is not None:
                require_int(name, getattr(cfg, name))
        if any(n < 1 for n in arch):
            raise ValueError(f"net_arch layer sizes must be >= 1, got {arch}")
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
