"""Reference levels of the cue task: what random answers and an oracle score per episode.

Random answers are the chance level (0 in expectation: +1 and -1 are equally likely on each Go
step). The oracle knows the target from step 0 and answers every Go step right, so its score is the
number of trials in the episode; a meta-learner must first find the target from the rewards, so it
stays below. Both play ``bpm/CueReward-v0``'s vector twin with the given keyword options, seeded.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from bpm_envs.maze_levels import policy_levels

ENV_ID = "bpm/CueReward-v0"
POLICIES = ("random", "oracle")


def play(policy: str, episodes: int, seed: int = 0, **env_kwargs: Any) -> np.ndarray:
    """Total reward of each of ``episodes`` episodes under ``policy`` ("random" or "oracle")."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    venv = gym.make_vec(ENV_ID, num_envs=episodes, **env_kwargs)
    _, info = venv.reset(seed=seed)
    rng = np.random.default_rng(seed)
    total = np.zeros(episodes)
    truncated = np.zeros(episodes, dtype=bool)
    while not truncated.all():
        if policy == "random":
            actions = rng.integers(0, 2, size=episodes)
        else:  # action 1 answers "the target is in the pair"; off Go steps it is not graded
            actions = info["target_in_pair"].astype(np.int64)
        _, reward, _, truncated, info = venv.step(actions)
        total += reward
    venv.close()
    return total


def levels(episodes: int = 100_000, seed: int = 0, **env_kwargs: Any) -> dict[str, dict[str, float]]:
    """Mean and standard error of the random answers' and the oracle's episode reward."""
    return policy_levels(play, episodes, seed, **env_kwargs)
