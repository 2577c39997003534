"""Running episodes: :func:`evaluate` (many, batched, summarised) and :func:`run_episode` (one, traced).

Seeding: episode ``j`` of an evaluation with seed ``s`` is drawn by env seed ``s + j`` (whatever
the batch size), and actions are sampled from a torch generator seeded with ``s``. Episodes run in
lock-step batches on the env's native vector twin. On the cue task the answers are read from the
env's infos by :func:`bpm_envs.cue_reward.answers_from_infos`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import gymnasium as gym
import numpy as np
import torch

from bpm_agents.evaluation.agents import make_actor, seeded_torch
from bpm_agents.evaluation.envs import check_env_id, check_fits, env_of, make_env, window_closed
from bpm_agents.evaluation.stats import EvaluationResult, correct_by_trial, mean_ci95
from bpm_envs.checks import require_int
from bpm_envs.cue_reward import answers_from_infos, is_cue_info

DEFAULT_BATCH_SIZE = 50


def evaluate(
    agent: Any,
    env_id: str | None = None,
    episodes: int = 200,
    seed: int = 0,
    deterministic: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    env_kwargs: dict[str, Any] | None = None,
    max_steps: int = 100_000,
) -> EvaluationResult:
    """Run ``episodes`` episodes of ``agent`` in lock-step batches on the native vector env.

    Args:
        agent: a :class:`PlasticAgent` or any object with SB3's ``predict`` and ``env_id``.
        env_id: defaults to the agent's env; ``env_kwargs`` likewise.
        episodes: number of episodes (>= 1).
        seed: episode ``j`` uses env seed ``seed + j``; action sampling is seeded with ``seed``.
        deterministic: greedy actions instead of sampling.
        batch_size: episodes run together (the last batch may be smaller).
        max_steps: safety bound on the steps of one batch.
    """
    episodes = require_int("episodes", episodes, 1)
    batch_size = require_int("batch_size", batch_size, 1)
    env_id, env_kwargs = env_of(agent, env_id, env_kwargs)
    check_env_id(env_id)
    generator = torch.Generator().manual_seed(int(seed))
    rewards_all: list[np.ndarray] = []
    trials: list[np.ndarray] = []
    grades: list[np.ndarray] = []
    lengths: list[int] = []
    cue = False
    with seeded_torch(int(seed)):
        for start in range(0, episodes, batch_size):
            n = min(batch_size, episodes - start)
            envs = gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point", **env_kwargs)
            try:
                check_fits(agent, env_id, envs.single_observation_space.shape)
                act = make_actor(agent, deterministic, generator)
                obs, info = envs.reset(seed=int(seed) + start)
                cue = is_cue_info(info)
                totals = np.zeros(n, dtype=np.float64)
                running = np.ones(n, dtype=bool)
                starts = np.ones(n, dtype=bool)
                infos = [info]
                steps = 0
                while running.any():
                    if steps >= max_steps:
                        raise RuntimeError(f"episodes of {env_id} did not end within {max_steps} steps")
                    actions, _ = act(obs, starts)
                    obs, reward, terminated, truncated, info = envs.step(actions)
                    totals += np.where(running, reward, 0.0)
                    if cue:
                        infos.append(info)
                    running &= ~(terminated | truncated)
                    starts = np.zeros(n, dtype=bool)
                    steps += 1
                lengths.append(steps)
                rewards_all.append(totals)
                if cue:  # cue episodes all last episode_length steps: no autoreset inside
                    t, g = answers_from_infos(infos)
                    trials.append(t)
                    grades.append(g)
            finally:
                envs.close()
    rewards = np.concatenate(rewards_all)
    mean, half = mean_ci95(rewards)
    accuracy = None
    if cue:
        width = max(t.shape[1] for t in trials)
        pad = lambda a, v: np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=v)  # noqa: E731
        accuracy = correct_by_trial(
            np.concatenate([pad(t, 0) for t in trials]), np.concatenate([pad(g, -1) for g in grades])
        )
    return EvaluationResult(
        env_id=env_id,
        algo=getattr(agent, "algo", None),
        episodes=episodes,
        seed=int(seed),
        deterministic=bool(deterministic),
        episode_length=max(lengths),
        episode_rewards=rewards,
        mean_reward=mean,
        ci95=half,
        std_reward=float(rewards.std(ddof=1)) if rewards.size > 1 else math.nan,
        trial_accuracy=accuracy,
    )


@dataclass
class EpisodeTrace:
    """One episode on a single env, step by step (T steps).

    ``observations`` (T + 1, D) includes the final one; ``infos`` has T + 1 entries (reset, then
    each step); ``actions`` (T,), ``rewards`` (T,) the reward of the action at step t,
    ``modulators`` (T,) M(t) computed from observation t, or None; ``frames`` the rgb frames
    (T + 1 of them) when recorded; ``stopped_early`` when ``on_frame`` or the user closing the
    window ended the episode.
    """

    observations: np.ndarray
    infos: list[dict[str, Any]]
    actions: np.ndarray
    rewards: np.ndarray
    modulators: np.ndarray | None
    frames: list[np.ndarray]
    stopped_early: bool = False

    @property
    def total_reward(self) -> float:
        return float(self.rewards.sum())


def run_episode(
    agent: Any,
    seed: int = 0,
    deterministic: bool = False,
    env_id: str | None = None,
    env_kwargs: dict[str, Any] | None = None,
    render_mode: str | None = None,
    on_frame: Callable[[np.ndarray], bool | None] | None = None,
    generator: torch.Generator | None = None,
    max_steps: int = 100_000,
) -> EpisodeTrace:
    """Run one episode of ``agent`` on a single env reset with ``seed``.

    The task drawn equals episode 0 of ``evaluate(agent, seed=seed)``. With
    ``render_mode="rgb_array"`` every frame is kept (and passed to ``on_frame``, which may return
    True to stop early); with ``"human"`` the env draws its own window.
    """
    env_id, env_kwargs = env_of(agent, env_id, env_kwargs)
    if generator is None:
        generator = torch.Generator().manual_seed(int(seed))
    env = make_env(env_id, env_kwargs, render_mode)
    try:
        check_fits(agent, env_id, env.observation_space.shape)
        act = make_actor(agent, deterministic, generator)
        obs, info = env.reset(seed=int(seed))
        observations, infos, actions, rewards, mods = [obs], [info], [], [], []
        frames: list[np.ndarray] = []

        def grab() -> bool:
            if render_mode != "rgb_array":
                return False
            frame = cast(np.ndarray, env.render())  # rgb_array mode: one (H, W, 3) frame
            frames.append(frame)
            return bool(on_frame(frame)) if on_frame is not None else False

        stop = grab()
        done, steps = False, 0
        while not done and not stop and steps < max_steps:
            a, m = act(obs[None], np.array([steps == 0]))
            obs, reward, terminated, truncated, info = env.step(int(a[0]))
            observations.append(obs)
            infos.append(info)
            actions.append(int(a[0]))
            rewards.append(float(reward))
            if m is not None:
                mods.append(float(m[0]))
            done = bool(terminated or truncated)
            steps += 1
            stop = grab() or window_closed(env)
    finally:
        env.close()
    return EpisodeTrace(
        np.asarray(observations, dtype=np.float32),
        infos,
        np.asarray(actions, dtype=np.int64),
        np.asarray(rewards, dtype=np.float64),
        np.asarray(mods, dtype=np.float64) if mods else None,
        frames,
        stop,
    )


__all__ = ["DEFAULT_BATCH_SIZE", "EpisodeTrace", "evaluate", "run_episode"]
