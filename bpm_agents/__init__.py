"""Plastic recurrent agents (Backpropamine) and the A2C trainer.

One import gives what the command lines use::

    from bpm_agents import A2CConfig, A2CTrainer, train
    result = train(A2CConfig(env_id="bpm/CueReward-v0", rule="retroactive"), "runs/cue", updates=100)

The names below are imported on first use (PEP 562), so ``import bpm_agents.lm`` (or any other
submodule) loads neither the RL side nor Gymnasium.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the submodule that defines it
_EXPORTS = {
    "A2CConfig": "bpm_agents.a2c",
    "A2CTrainer": "bpm_agents.a2c",
    "a2c_loss": "bpm_agents.a2c",
    "collect_rollout": "bpm_agents.a2c",
    "discounted_returns": "bpm_agents.a2c",
    "PlasticRNN": "bpm_agents.networks",
    "RULES": "bpm_agents.plasticity",
    "PlasticityConfig": "bpm_agents.plasticity",
    "PlasticState": "bpm_agents.plasticity",
    "PlasticSynapses": "bpm_agents.plasticity",
    "PlasticActorCritic": "bpm_agents.policy",
    "PolicyConfig": "bpm_agents.policy",
    "load_trainer": "bpm_agents.training",
    "train": "bpm_agents.training",
}

__all__ = [
    "A2CConfig",
    "A2CTrainer",
    "PlasticActorCritic",
    "PlasticRNN",
    "PlasticState",
    "PlasticSynapses",
    "PlasticityConfig",
    "PolicyConfig",
    "RULES",
    "a2c_loss",
    "collect_rollout",
    "discounted_returns",
    "load_trainer",
    "train",
]

if TYPE_CHECKING:
    from bpm_agents.a2c import A2CConfig, A2CTrainer, a2c_loss, collect_rollout, discounted_returns
    from bpm_agents.networks import PlasticRNN
    from bpm_agents.plasticity import RULES, PlasticityConfig, PlasticState, PlasticSynapses
    from bpm_agents.policy import PlasticActorCritic, PolicyConfig
    from bpm_agents.training import load_trainer, train


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bpm_agents' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
