"""Plastic recurrent agents (Backpropamine) and the A2C trainer.

One import gives what the command lines use::

    from bpm_agents import A2CConfig, A2CTrainer, train
    result = train(A2CConfig(env_id="bpm/CueReward-v0", rule="retroactive"), "runs/cue", updates=100)
"""

from bpm_agents.a2c import A2CConfig, A2CTrainer, a2c_loss, collect_rollout, discounted_returns
from bpm_agents.networks import PlasticRNN
from bpm_agents.plasticity import RULES, PlasticityConfig, PlasticState, PlasticSynapses
from bpm_agents.policy import PlasticActorCritic, PolicyConfig
from bpm_agents.training import load_trainer, train

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
