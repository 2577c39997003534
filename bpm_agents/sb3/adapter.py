"""The SB3 ``VecEnv`` adapter over our native vector envs: :class:`NativeVecEnv`, :func:`make_sb3_vec_env`.

SB3 steps a :class:`~stable_baselines3.common.vec_env.VecEnv`. :class:`NativeVecEnv` adapts the
native batched twin of a bpm/ task (``gym.make_vec(..., vectorization_mode="vector_entry_point")``)
and reproduces SB3's ``DummyVecEnv`` exactly (see :mod:`bpm_agents.sb3`).
"""

from __future__ import annotations

from typing import Any, cast

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnv, VecMonitor

import bpm_envs  # noqa: F401  (registers the bpm/ environments)
from bpm_agents.checkpoint import CheckpointError
from bpm_envs.batched import BatchedVectorEnv


def check_bpm_env_id(env_id: str) -> None:
    """Refuse ids other than the bpm/ tasks (the adapter needs their lock-step batched twin)."""
    bpm_envs.check_env_id(env_id, "the SB3 peers train on")


class NativeVecEnv(VecEnv):
    """SB3 ``VecEnv`` over the native vector twin of a bpm/ env (lock-step, fixed-length episodes).

    The native env autoresets on the *next* step (Gymnasium's ``NEXT_STEP`` mode); SB3 wants the
    reset in the *same* step, with the final observation in ``info["terminal_observation"]``.
    Every bpm/ episode lasts exactly ``episode_length`` steps and all envs start together, so all
    envs end on the same step; the adapter then calls the native ``reset()`` once (each env's
    generator continues, as after ``DummyVecEnv``'s per-env ``reset()``).

    Args:
        env_id: a registered bpm/ id.
        n_envs: number of episodes stepped together.
        env_kwargs: options of the environment.
        task_info: also copy the task's per-step ``info`` into each env's info dict (slower; SB3
            only needs ``terminal_observation`` and ``TimeLimit.truncated``).
    """

    def __init__(
        self,
        env_id: str,
        n_envs: int,
        env_kwargs: dict[str, Any] | None = None,
        task_info: bool = False,
    ) -> None:
        check_bpm_env_id(env_id)
        # the vector entry point of a bpm/ id is its BatchedVectorEnv, unwrapped
        self.native = cast(
            BatchedVectorEnv,
            gym.make_vec(
                env_id, num_envs=n_envs, vectorization_mode="vector_entry_point", **(env_kwargs or {})
            ),
        )
        self.task_info = task_info
        self.render_mode = None
        self._record: dict[str, Any] | None = None
        super().__init__(
            self.native.num_envs,
            self.native.single_observation_space,
            self.native.single_action_space,
        )

    def reset(self) -> np.ndarray:
        seeds = None if all(s is None for s in self._seeds) else list(self._seeds)
        self._begin_record(seeds)
        obs, info = self.native.reset(seed=seeds)
        self.reset_infos = self._split_info(info) if self.task_info else [{} for _ in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        return obs

    def _begin_record(self, seeds: list[int | None] | None) -> None:
        """Remember how the episode about to start is drawn, and its actions from here on."""
        rngs = None if seeds is not None or self.native._rngs is None else self.native.get_rng_states()
        replayable = seeds is not None or rngs is not None
        self._record = {"seeds": seeds, "rng_states": rngs, "actions": []} if replayable else None

    def episode_record(self) -> dict[str, Any] | None:
        """How to rebuild the envs' current state exactly: the seeds or generator states that
        started the running episodes and the actions taken since (``None`` before the first
        reset, or after an unseeded one). See :meth:`replay`."""
        if self._record is None:
            return None
        actions = self._record["actions"]
        return {
            "seeds": self._record["seeds"],
            "rng_states": self._record["rng_states"],
            "actions": torch.from_numpy(np.stack(actions))
            if actions
            else torch.zeros((0, self.num_envs), dtype=torch.int64),
        }

    def replay(self, record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, int]:
        """Put the envs back into the state :meth:`episode_record` described.

        Returns:
            (the current observation (n_envs, D), the rewards of the running episodes so far
            (n_envs,), the number of steps they have taken).
        """
        seeds, rngs = record["seeds"], record["rng_states"]
        if seeds is None:
            self.native.set_rng_states(rngs)
        self._begin_record(seeds)
        assert self._record is not None  # seeded, or the generator states were just set
        obs, _ = self.native.reset(seed=seeds)
        self._reset_seeds()
        total = np.zeros(self.num_envs, dtype=np.float64)
        actions = record["actions"].numpy()
        for a in actions:
            self._record["actions"].append(a.copy())
            obs, rewards, terminated, truncated, _ = self.native.step(a)
            if (terminated | truncated).any():
                raise CheckpointError("the saved episode record is longer than an episode")
            total += rewards
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return obs, total, len(actions)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(self.num_envs)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
        if self._record is not None:
            self._record["actions"].append(self.native.task.check_actions(self._actions).copy())
        obs, rewards, terminated, truncated, info = self.native.step(self._actions)
        dones = terminated | truncated
        infos = self._split_info(info) if self.task_info else [{} for _ in range(self.num_envs)]
        if dones.any():
            if not dones.all():
                raise RuntimeError(
                    f"bpm/ episodes must end together (fixed length, lock-step); got dones={dones.tolist()}"
                )
            for i, inf in enumerate(infos):
                inf["terminal_observation"] = obs[i]
                inf["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            self._begin_record(None)
            obs, reset_info = self.native.reset()
            self.reset_infos = self._split_info(reset_info) if self.task_info else [{} for _ in infos]
        return obs, rewards.astype(np.float32), dones, infos

    def _split_info(self, info: dict[str, Any]) -> list[dict[str, Any]]:
        return [{k: v[i] for k, v in info.items() if not k.startswith("_")} for i in range(self.num_envs)]

    def close(self) -> None:
        self.native.close()

    @property
    def episode_length(self) -> int:
        return int(cast(BatchedVectorEnv, self.native.unwrapped).episode_length)

    # SB3 asks a few attributes of its envs; the native env is one object, so every index
    # sees the same value.
    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        if attr_name == "render_mode":
            return [None] * len(self._indices(indices))
        value = getattr(self.native.unwrapped, attr_name)
        return [value] * len(self._indices(indices))

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        setattr(self.native.unwrapped, attr_name, value)

    def env_method(self, method_name: str, *args: Any, indices: Any = None, **kwargs: Any) -> list[Any]:
        raise AttributeError(
            f"NativeVecEnv cannot call {method_name!r} per env: the envs are one batched object"
        )

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        return [False] * len(self._indices(indices))

    def _indices(self, indices: Any) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        if isinstance(indices, int):
            return [indices]
        return list(indices)


def make_sb3_vec_env(
    env_id: str, n_envs: int, seed: int | None = None, env_kwargs: dict[str, Any] | None = None
) -> VecMonitor:
    """``n_envs`` native envs for SB3, seeded ``seed + i`` at the first reset, with episode stats."""
    venv = NativeVecEnv(env_id, n_envs, env_kwargs)
    if seed is not None:
        venv.seed(seed)
    return VecMonitor(venv)
