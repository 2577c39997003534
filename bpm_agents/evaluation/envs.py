"""The environment an evaluation runs on: the agent's env (or another one), built and checked."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

import bpm_envs  # registers the bpm/ environments


def check_env_id(env_id: str) -> None:
    """Raise ``ValueError`` naming the bpm ids if ``env_id`` is not registered with Gymnasium."""
    bpm_envs.check_env_id(env_id, "the bpm tasks are", any_registered=True)


def make_env(env_id: str, env_kwargs: dict[str, Any], render_mode: str | None = None) -> gym.Env:
    """A single env ``env_id`` built with ``env_kwargs`` (Gymnasium's env checker off)."""
    check_env_id(env_id)
    return gym.make(env_id, render_mode=render_mode, disable_env_checker=True, **env_kwargs)


def env_of(agent: Any, env_id: str | None, env_kwargs: dict[str, Any] | None) -> tuple[str, dict]:
    """``(env_id, env_kwargs)``: the given ones, else the agent's ``env_id`` / ``env_kwargs``."""
    env_id = agent.env_id if env_id is None else env_id
    env_kwargs = dict(getattr(agent, "env_kwargs", {}) or {}) if env_kwargs is None else env_kwargs
    return env_id, env_kwargs


def check_fits(agent: Any, env_id: str, obs_shape: tuple[int, ...] | None) -> None:
    """Raise ``ValueError`` if the agent declares an ``observation_size`` other than the env's."""
    expected = getattr(agent, "observation_size", None)
    if expected is not None and obs_shape != (expected,):
        raise ValueError(
            f"the agent was trained on {agent.env_id!r} with observations of size {expected}, "
            f"but {env_id!r} gives observations of shape {obs_shape}"
        )


def render_fps(env_id: str, env_kwargs: dict[str, Any]) -> float:
    """The env's ``metadata["render_fps"]`` (10 if it has none)."""
    env = make_env(env_id, env_kwargs)
    try:
        return float(env.metadata.get("render_fps", 10))
    finally:
        env.close()


def render_modes(env_id: str, env_kwargs: dict[str, Any]) -> tuple[list[str], float]:
    """The env's ``metadata`` render modes and fps (10 if it has none)."""
    env = make_env(env_id, env_kwargs)
    try:
        return list(env.metadata.get("render_modes", [])), env.metadata.get("render_fps", 10)
    finally:
        env.close()


def window_closed(env: gym.Env) -> bool:
    """Whether the user closed ``env``'s render window.

    Reads the public :attr:`~bpm_envs.rendering.HumanRendering.window_closed` of the bpm envs;
    False for envs without one.
    """
    return bool(getattr(env.unwrapped, "window_closed", False))
