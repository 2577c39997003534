"""Gymnasium environments of the Backpropamine paper.

Importing this package registers (idempotently):

- ``bpm/CueReward-v0``: cue-reward association (:class:`CueRewardEnv`, vector twin
  :class:`CueRewardVectorEnv`).
- ``bpm/PlasticMaze-v0``: 9x9 maze with an invisible, teleporting reward
  (:class:`PlasticMazeEnv`, vector twin :class:`PlasticMazeVectorEnv`).

``gym.make_vec(id, num_envs=n)`` returns the native batched twin (no Python loop over
environments); ``vectorization_mode="sync"`` still gives Gymnasium's ``SyncVectorEnv``.
"""

from gymnasium.envs.registration import register, registry

from bpm_envs.cue_reward import CueRewardEnv, CueRewardVectorEnv
from bpm_envs.maze import PlasticMazeEnv, PlasticMazeVectorEnv

__all__ = [
    "CueRewardEnv",
    "CueRewardVectorEnv",
    "PlasticMazeEnv",
    "PlasticMazeVectorEnv",
    "ENV_IDS",
]

ENV_IDS = ("bpm/CueReward-v0", "bpm/PlasticMaze-v0")


def _register() -> None:
    if "bpm/CueReward-v0" not in registry:
        register(
            id="bpm/CueReward-v0",
            entry_point="bpm_envs.cue_reward:CueRewardEnv",
            vector_entry_point="bpm_envs.cue_reward:CueRewardVectorEnv",
        )
    if "bpm/PlasticMaze-v0" not in registry:
        register(
            id="bpm/PlasticMaze-v0",
            entry_point="bpm_envs.maze:PlasticMazeEnv",
            vector_entry_point="bpm_envs.maze:PlasticMazeVectorEnv",
        )


_register()
