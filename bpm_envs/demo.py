"""Run a uniformly random policy in a ``bpm/`` env, print its rewards, show it and/or save a GIF.

python -m bpm_envs.demo --gif maze.gif            # one maze episode -> maze.gif
python -m bpm_envs.demo --render human            # watch it in a pygame-ce window
python -m bpm_envs.demo --env bpm/CueReward-v0 --episodes 3
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import cast

import gymnasium as gym
import numpy as np

import bpm_envs
from bpm_envs.checks import int_at_least
from bpm_envs.rendering import HumanWindow, caption_strip, save_gif, stack_rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bpm_envs.demo",
        description="Run a uniformly random policy for a few episodes of a bpm/ environment, "
        "print the total reward of each, and optionally show it in a window or save a GIF.",
    )
    parser.add_argument(
        "--env",
        default="bpm/PlasticMaze-v0",
        choices=bpm_envs.ENV_IDS,
        help="environment id (default: %(default)s)",
    )
    parser.add_argument(
        "--episodes", type=int_at_least(1), default=1, help="number of episodes (default: %(default)s)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the first episode and of the random policy; later episodes "
        "continue the same generators (default: %(default)s)",
    )
    parser.add_argument(
        "--render",
        choices=("human", "none"),
        default="none",
        help="'human' shows every step in a pygame-ce window at the env's render_fps (default: %(default)s)",
    )
    parser.add_argument(
        "--gif",
        default=None,
        metavar="PATH",
        help="save every frame of every episode (first observation included) as an animated GIF at PATH",
    )
    parser.add_argument(
        "--steps",
        type=int_at_least(1),
        default=None,
        metavar="N",
        help="stop each episode after at most N steps (default: the full episode)",
    )
    return parser


def run(
    env_id: str = "bpm/PlasticMaze-v0",
    episodes: int = 1,
    seed: int = 0,
    render: str = "none",
    gif: str | None = None,
    steps: int | None = None,
) -> list[float]:
    """Run the random-policy demo; return the total reward of each episode."""
    if render not in ("human", "none"):
        raise ValueError(f"render must be 'human' or 'none', got {render!r}")
    want_frames = render == "human" or gif is not None
    # One rgb_array env serves both the window and the GIF, so each frame is drawn once.
    env = gym.make(env_id, render_mode="rgb_array" if want_frames else None)
    window = (
        HumanWindow(title=f"{env_id} (random policy)", fps=env.metadata["render_fps"])
        if render == "human"
        else None
    )
    frames: list[np.ndarray] = []
    # the caption's "step k/T": the episode's length, or --steps if that cuts it shorter
    spec_limit = env.spec.max_episode_steps if env.spec is not None else None
    limits = [n for n in (getattr(env.unwrapped, "episode_length", None), spec_limit, steps) if n]
    of_limit = f"/{min(limits)}" if limits else ""

    def record(episode: int, step: int, total: float) -> None:
        # render_mode is "rgb_array" whenever record runs, so render() gives one RGB array
        frame = cast(np.ndarray, env.render())
        if gif is not None:  # the GIF's frames get a caption: episode, step, reward so far
            text = f"episode {episode + 1}/{episodes}   step {step}{of_limit}   reward so far {total:+g}"
            frames.append(stack_rows(frame, caption_strip(frame.shape[1], text)))
        if window is not None:
            window.show(frame)

    env.action_space.seed(seed)
    totals: list[float] = []
    try:
        for episode in range(episodes):
            env.reset(seed=seed if episode == 0 else None)
            total, n, done = 0.0, 0, False
            if want_frames:
                record(episode, n, total)
            while not done and (steps is None or n < steps):
                _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
                total += float(reward)
                n += 1
                done = terminated or truncated
                if want_frames:
                    record(episode, n, total)
                if window is not None and window.closed_by_user:
                    break
            totals.append(total)
            print(f"episode {episode}: {n} steps, total reward {total:g}")
            if window is not None and window.closed_by_user:
                break
    finally:
        env.close()
        if window is not None:
            window.close()
    if len(totals) > 1:
        print(f"mean total reward over {len(totals)} episodes: {np.mean(totals):g}")
    if gif is not None:
        path = save_gif(frames, gif, fps=env.metadata["render_fps"])
        print(f"saved {len(frames)} frames to {path}")
    return totals


def main(argv: Sequence[str] | None = None) -> list[float]:
    args = build_parser().parse_args(argv)
    return run(args.env, args.episodes, args.seed, args.render, args.gif, args.steps)


if __name__ == "__main__":
    main()
