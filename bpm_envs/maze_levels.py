"""Reference levels of the maze: what a random walk and an all-knowing oracle score per episode.

A learned agent's reward means little without them: the random walk is the floor (no memory), the
oracle the ceiling (it knows the reward cell from step 0 and walks a shortest path to it after
every teleport). A meta-learner must first find the cell, so it stays below the oracle.
Both play ``bpm/PlasticMaze-v0``'s vector twin with the given keyword options, seeded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from bpm_envs.maze import MOVES, build_walls

ENV_ID = "bpm/PlasticMaze-v0"


def distances(walls: np.ndarray) -> np.ndarray:
    """(cells, cells) shortest-path step counts between the array's cells (walls: -1)."""
    side = walls.shape[0]
    n = side * side
    flat = walls.ravel()
    dist = np.full((n, n), -1, dtype=np.int64)
    for src in np.flatnonzero(~flat):
        dist[src, src] = 0
        frontier = [int(src)]
        while frontier:
            nxt = []
            for cell in frontier:
                r, c = divmod(cell, side)
                for dr, dc in MOVES:
                    to = (r + dr) * side + (c + dc)
                    if not flat[to] and dist[src, to] < 0:
                        dist[src, to] = dist[src, cell] + 1
                        nxt.append(to)
            frontier = nxt
    return dist


def play(policy: str, episodes: int, seed: int = 0, **env_kwargs: Any) -> np.ndarray:
    """Total reward of each of ``episodes`` episodes under ``policy`` ("random" or "oracle")."""
    if policy not in ("random", "oracle"):
        raise ValueError(f"policy must be 'random' or 'oracle', got {policy!r}")
    venv = gym.make_vec(ENV_ID, num_envs=episodes, **env_kwargs)
    _, info = venv.reset(seed=seed)
    task = venv.unwrapped.task  # type: ignore[attr-defined]
    side = task.side
    dist = distances(build_walls(task.size))
    moves = MOVES[:, 0] * side + MOVES[:, 1]
    rng = np.random.default_rng(seed)
    total = np.zeros(episodes)
    truncated = np.zeros(episodes, dtype=bool)
    while not truncated.all():
        if policy == "random":
            actions = rng.integers(0, 4, size=episodes)
        else:
            pos = info["agent_pos"][:, 0] * side + info["agent_pos"][:, 1]
            goal = info["reward_pos"][:, 0] * side + info["reward_pos"][:, 1]
            to = pos[:, None] + moves[None, :]  # (B, 4); a wall keeps the agent in place
            to = np.where(task._walls_flat[to], pos[:, None], to)
            d = dist[to, goal[:, None]].astype(float)
            d += rng.random(d.shape) * 0.5  # break ties between equally short moves at random
            actions = d.argmin(axis=1)
        _, reward, _, truncated, info = venv.step(actions)
        total += reward
    venv.close()
    return total


def policy_levels(
    play_fn: Callable[..., np.ndarray], episodes: int, seed: int, **env_kwargs: Any
) -> dict[str, dict[str, float]]:
    """Mean and standard error of the episode reward of ``play_fn``'s random and oracle policies
    (the maze's :func:`play` or the cue task's ``bpm_envs.cue_levels.play``)."""
    out = {}
    for policy in ("random", "oracle"):
        r = play_fn(policy, episodes, seed, **env_kwargs)
        out[policy] = {"mean": float(r.mean()), "stderr": float(r.std(ddof=1) / np.sqrt(len(r)))}
    return out


def levels(episodes: int = 100_000, seed: int = 0, **env_kwargs: Any) -> dict[str, dict[str, float]]:
    """Mean and standard error of the random walk's and the oracle's episode reward."""
    return policy_levels(play, episodes, seed, **env_kwargs)
