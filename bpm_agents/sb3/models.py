"""Building the SB3 models: :func:`build_model`, :func:`count_parameters`."""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from bpm_agents.sb3.config import ALGOS, SB3Config
from bpm_envs.extras import require


def build_model(config: SB3Config, env: VecEnv, device: str | torch.device = "cpu") -> BaseAlgorithm:
    """A fresh SB3 model of a resolved ``config`` on ``env``, weights seeded by ``config.seed``.

    SB3 seeds Python's, numpy's and torch's *global* generators (``set_random_seed``); that is
    how SB3 samples actions, so a run is reproducible only as a whole process.
    """
    common: dict[str, Any] = dict(
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
    assert config.net_arch is not None, "resolve() the config first"
    arch = list(config.net_arch)
    if config.algo == "ppo":
        from stable_baselines3 import PPO

        assert config.minibatch_size is not None and config.n_epochs is not None  # filled by resolve()
        assert config.clip_range is not None

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
