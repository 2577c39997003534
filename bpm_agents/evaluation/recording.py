"""Showing episodes: a captioned GIF (:func:`record_gif`) and a live pygame-ce window (:func:`render_episodes`).

Both need the ``render`` extra (pygame-ce for the captions and the window, Pillow for the GIF),
imported only when they run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bpm_agents.evaluation.agents import seeded_torch
from bpm_agents.evaluation.envs import env_of, render_fps, render_modes
from bpm_agents.evaluation.episodes import run_episode
from bpm_envs.checks import require_int


def record_gif(
    agent: Any,
    path: str | Path,
    episodes: int = 1,
    seed: int = 0,
    deterministic: bool = False,
    env_id: str | None = None,
    env_kwargs: dict[str, Any] | None = None,
    fps: float | None = None,
) -> tuple[Path, list[float]]:
    """Save ``episodes`` episodes (env seeds ``seed``, ``seed + 1``, ...) as one GIF.

    Every frame gets a caption strip under it: ``episode j/n   step k/T   reward so far R``
    (drawn with pygame-ce, the ``render`` extra). Returns the path and the total reward of each
    recorded episode.
    """
    from bpm_envs.rendering import caption_strip, save_gif, stack_rows

    episodes = require_int("episodes", episodes, 1)
    env_id, env_kwargs = env_of(agent, env_id, env_kwargs)
    generator = torch.Generator().manual_seed(int(seed))
    frames: list[np.ndarray] = []
    totals = []
    with seeded_torch(int(seed)):
        for j in range(episodes):
            trace = run_episode(
                agent,
                int(seed) + j,
                deterministic,
                env_id,
                env_kwargs,
                render_mode="rgb_array",
                generator=generator,
            )
            so_far = np.concatenate([[0.0], np.cumsum(trace.rewards)])
            last = len(trace.frames) - 1
            for k, frame in enumerate(trace.frames):
                text = f"episode {j + 1}/{episodes}   step {k}/{last}   reward so far {so_far[k]:+g}"
                frames.append(stack_rows(frame, caption_strip(frame.shape[1], text)))
            totals.append(trace.total_reward)
    if fps is None:
        fps = render_fps(env_id, env_kwargs)
    return save_gif(frames, path, fps=fps), totals


def render_episodes(
    agent: Any,
    episodes: int = 1,
    seed: int = 0,
    deterministic: bool = False,
    env_id: str | None = None,
    env_kwargs: dict[str, Any] | None = None,
) -> list[float]:
    """Show episodes in a pygame-ce window; return their total rewards.

    Uses the env's own ``human`` render mode where it has one (the maze); otherwise (the cue
    task) its ``rgb_array`` frames are shown in a :class:`~bpm_envs.rendering.HumanWindow`.
    Stops when the user closes the window.
    """
    from bpm_envs.rendering import HumanWindow

    episodes = require_int("episodes", episodes, 1)
    env_id, env_kwargs = env_of(agent, env_id, env_kwargs)
    modes, fps = render_modes(env_id, env_kwargs)
    generator = torch.Generator().manual_seed(int(seed))
    totals: list[float] = []
    window = None if "human" in modes else HumanWindow(title=f"{env_id}", fps=fps)
    try:
        with seeded_torch(int(seed)):
            for j in range(episodes):
                if window is not None:

                    def show(frame: np.ndarray) -> bool:
                        window.show(frame)
                        return window.closed_by_user

                    trace = run_episode(
                        agent,
                        int(seed) + j,
                        deterministic,
                        env_id,
                        env_kwargs,
                        render_mode="rgb_array",
                        on_frame=show,
                        generator=generator,
                    )
                    trace.frames.clear()
                    closed = window.closed_by_user
                else:
                    trace = run_episode(
                        agent,
                        int(seed) + j,
                        deterministic,
                        env_id,
                        env_kwargs,
                        render_mode="human",
                        generator=generator,
                    )
                    closed = trace.stopped_early
                totals.append(trace.total_reward)
                if closed:
                    break
    finally:
        if window is not None:
            window.close()
    return totals


__all__ = ["record_gif", "render_episodes"]
