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
    "check_env_id",
]

ENV_IDS = ("bpm/CueReward-v0", "bpm/PlasticMaze-v0")


def check_env_id(env_id: str, trains_on: str, any_registered: bool = False) -> None:
    """Refuse an env id that is not one of :data:`ENV_IDS`, naming it and what is allowed.

    Args:
        trains_on: who needs a bpm/ task, for the message (``"plastic A2C trains on"``).
        any_registered: accept any id in Gymnasium's registry (an evaluation may run elsewhere).
    Raises:
        ValueError: ``'CartPole-v1' is a Gymnasium env, not a bpm/ task; plastic A2C trains on:
        bpm/CueReward-v0, bpm/PlasticMaze-v0`` (or ``unknown env id ...``).
    """
    if env_id in ENV_IDS or (any_registered and env_id in registry):
        return
    what = (
        f"{env_id!r} is a Gymnasium env, not a bpm/ task"
        if env_id in registry
        else f"unknown env id {env_id!r}"
    )
    raise ValueError(f"{what}; {trains_on}: {', '.join(ENV_IDS)}")


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
