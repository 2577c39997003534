"""One batched implementation per task, two thin faces: a single ``gym.Env`` and a native ``VectorEnv``.

A task subclasses :class:`BatchedTask` and writes its rules once, for ``num_envs`` episodes held in
numpy arrays (batch first). :class:`BatchedSingleEnv` is the batch of one; :class:`BatchedVectorEnv`
is the batch of ``num_envs`` with Gymnasium's next-step autoreset. Because both faces call the same
rules, a vector env of N copies equals N single envs seeded alike, step for step.

Randomness contract: every random draw of an episode happens in :meth:`BatchedTask.begin_episodes`,
from the generator of that episode's env (env ``i`` of a vector env reset with seed ``s`` uses
``seed + i``, as Gymnasium's ``SyncVectorEnv`` does). :meth:`BatchedTask.apply_actions` draws
nothing, so stepping is fully vectorised and reproducible.

Observation layout shared by all tasks: ``[task features..., previous reward, previous action
one-hot (zeros at t=0), t/T]``.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from bpm_envs.checks import require_int
from bpm_envs.rendering import HumanRendering


class BatchedTask(ABC):
    """Rules of one task for ``num_envs`` independent episodes (numpy, batch first).

    Subclasses set ``n_actions`` and ``task_feature_size`` in ``__init__`` (before calling
    ``super().__init__``) and implement :meth:`begin_episodes`, :meth:`apply_actions`,
    :meth:`task_features`; optionally :meth:`info`, :meth:`render_rgb`, :meth:`render_ansi`.
    """

    n_actions: int
    task_feature_size: int
    #: scale of the reward, used as the Box bound of the previous-reward input
    max_abs_reward: float = 1.0

    def __init__(self, num_envs: int, episode_length: int) -> None:
        self.num_envs = require_int("num_envs", num_envs)
        self.episode_length = require_int("episode_length", episode_length)
        self.t = np.zeros(self.num_envs, dtype=np.int64)
        self.prev_reward = np.zeros(self.num_envs, dtype=np.float32)
        self.prev_action = np.full(self.num_envs, -1, dtype=np.int64)  # -1: no action yet
        #: sum of the rewards of the running episode (shown by the labelled frames)
        self.return_so_far = np.zeros(self.num_envs, dtype=np.float64)

    # ----------------------------------------------------------------- task rules
    @abstractmethod
    def begin_episodes(self, envs: np.ndarray, rngs: Sequence[np.random.Generator]) -> None:
        """Draw fresh episodes for the env indices ``envs`` (int array), ``rngs[k]`` for ``envs[k]``.

        All of an episode's randomness is drawn here. Time, previous reward and previous action are
        reset by the caller.
        """

    @abstractmethod
    def apply_actions(self, actions: np.ndarray) -> np.ndarray:
        """Apply ``actions`` (B,) int64 at the current step ``self.t`` (B,); return rewards (B,) float32.

        Must draw no random numbers and must not fail for envs whose episode is over
        (``t == episode_length``): their result is discarded by the vector face.
        """

    @abstractmethod
    def task_features(self) -> np.ndarray:
        """Task part of the observation at the current step: (B, task_feature_size) float32."""

    def info(self) -> dict[str, np.ndarray]:
        """Per-env analysis data: each value an array with leading dimension B."""
        return {}

    def render_rgb(self, env: int) -> np.ndarray:
        """A frame of env ``env``: (H, W, 3) uint8."""
        raise NotImplementedError(f"{type(self).__name__} has no rgb_array rendering")

    def render_ansi(self, env: int) -> str:
        """A text picture of env ``env``."""
        raise NotImplementedError(f"{type(self).__name__} has no ansi rendering")

    # ----------------------------------------------------------------- shared mechanics
    @property
    def observation_size(self) -> int:
        return self.task_feature_size + 1 + self.n_actions + 1

    def single_observation_space(self) -> spaces.Box:
        """Box of one observation; bounds are exact for every component."""
        low = np.concatenate(
            [
                self.task_feature_bounds()[0],
                [-self.max_abs_reward],
                np.zeros(self.n_actions),
                [0.0],
            ]
        ).astype(np.float32)
        high = np.concatenate(
            [
                self.task_feature_bounds()[1],
                [self.max_abs_reward],
                np.ones(self.n_actions),
                [1.0],
            ]
        ).astype(np.float32)
        return spaces.Box(low=low, high=high, dtype=np.float32)

    def task_feature_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) of the task features; default [-1, 1]."""
        return (
            -np.ones(self.task_feature_size, dtype=np.float32),
            np.ones(self.task_feature_size, dtype=np.float32),
        )

    def reset(self, envs: np.ndarray, rngs: Sequence[np.random.Generator]) -> None:
        """Start new episodes in ``envs`` (int array)."""
        self.begin_episodes(envs, rngs)
        self.t[envs] = 0
        self.prev_reward[envs] = 0.0
        self.prev_action[envs] = -1
        self.return_so_far[envs] = 0.0

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Advance all envs; return ``(rewards (B,) float32, truncated (B,) bool)``."""
        rewards = self.apply_actions(actions).astype(np.float32, copy=False)
        self.prev_reward = rewards.copy()
        self.prev_action = actions.astype(np.int64, copy=True)
        self.return_so_far += np.where(self.t < self.episode_length, rewards, 0.0)
        self.t = np.minimum(self.t + 1, self.episode_length)
        return rewards, self.t >= self.episode_length

    def observation(self) -> np.ndarray:
        """Full observations (B, observation_size) float32."""
        obs = np.zeros((self.num_envs, self.observation_size), dtype=np.float32)
        f = self.task_feature_size
        obs[:, :f] = self.task_features()
        obs[:, f] = self.prev_reward
        acted = self.prev_action >= 0
        obs[np.flatnonzero(acted), f + 1 + self.prev_action[acted]] = 1.0
        obs[:, -1] = self.t / self.episode_length
        return obs

    def check_actions(self, actions: Any) -> np.ndarray:
        """Validate a batch of actions; return it as (B,) int64 or raise ``ValueError``."""
        arr = np.asarray(actions)
        if arr.shape != (self.num_envs,):
            raise ValueError(
                f"expected a batch of {self.num_envs} actions with shape ({self.num_envs},), "
                f"got shape {arr.shape}"
            )
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                raise ValueError(f"actions must be integers in 0..{self.n_actions - 1}, got {arr.tolist()}")
        elif arr.dtype.kind not in "iu":
            raise ValueError(f"actions must be integers in 0..{self.n_actions - 1}, got dtype {arr.dtype}")
        arr = arr.astype(np.int64)
        bad = (arr < 0) | (arr >= self.n_actions)
        if bad.any():
            raise ValueError(f"invalid action {arr[bad][0]!r}: allowed actions are 0..{self.n_actions - 1}")
        return arr


def make_task(task_cls: type[BatchedTask], num_envs: int, options: dict[str, Any]) -> BatchedTask:
    """``task_cls(num_envs, **options)``; an option the task does not take is a ``TypeError``
    that lists the ones it does (Python's own message names only the first bad keyword)."""
    allowed = [
        name
        for name, p in inspect.signature(task_cls.__init__).parameters.items()
        if name not in ("self", "num_envs") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    unknown = [k for k in options if k not in allowed]
    if unknown:
        raise TypeError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} of "
            f"{task_cls.__name__}; allowed: {', '.join(allowed)}"
        )
    return task_cls(num_envs=num_envs, **options)


class BatchedSingleEnv(HumanRendering, gym.Env):
    """A single Gymnasium env that is the batch of one of a :class:`BatchedTask`.

    With ``render_mode="human"`` (where the task lists it) frames go to a pygame-ce window;
    :attr:`~bpm_envs.rendering.HumanRendering.window_closed` tells when the user has closed it.
    """

    task_cls: ClassVar[type[BatchedTask]]
    metadata: dict[str, Any] = {"render_modes": ["rgb_array", "ansi"], "render_fps": 4}

    def __init__(self, render_mode: str | None = None, **task_options: Any) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode={render_mode!r} is not supported; allowed: "
                f"{[None, *self.metadata['render_modes']]}"
            )
        self.render_mode = render_mode
        self.task = make_task(self.task_cls, 1, task_options)
        self.observation_space = self.task.single_observation_space()
        self.action_space = spaces.Discrete(self.task.n_actions)
        self._episode_over = True

    @property
    def episode_length(self) -> int:
        """Steps of every episode (the tasks' episodes all have this fixed length)."""
        return int(self.task.episode_length)

    def _single_info(self) -> dict[str, Any]:
        return {k: v[0] for k, v in self.task.info().items()}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.task.reset(np.zeros(1, dtype=np.int64), [self.np_random])
        self._episode_over = False
        if self.render_mode == "human":
            self.render()
        return self.task.observation()[0], self._single_info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._episode_over:
            raise RuntimeError("the episode is over (or never started): call reset() before step()")
        arr = np.asarray(action)
        if arr.shape not in ((), (1,)):
            raise ValueError(
                f"expected a single action (an int in 0..{self.task.n_actions - 1}), "
                f"got an array of shape {arr.shape}"
            )
        actions = self.task.check_actions(arr.reshape(1))
        rewards, truncated = self.task.step(actions)
        self._episode_over = bool(truncated[0])
        if self.render_mode == "human":
            self.render()
        return (
            self.task.observation()[0],
            float(rewards[0]),
            False,
            bool(truncated[0]),
            self._single_info(),
        )

    def render(self) -> np.ndarray | str | None:
        if self.render_mode == "rgb_array":
            return self.task.render_rgb(0)
        if self.render_mode == "ansi":
            return self.task.render_ansi(0)
        if self.render_mode == "human":
            self.show_in_window(self.task.render_rgb(0), type(self).__name__, self.metadata["render_fps"])
            return None
        return None

    def close(self) -> None:
        self.close_window()


class BatchedVectorEnv(VectorEnv):
    """The native vector twin: ``num_envs`` episodes stepped as one batch, next-step autoreset.

    After a step that ends an env's episode, the next :meth:`step` ignores that env's action,
    starts a new episode for it and returns its first observation with reward 0 (Gymnasium's
    ``AutoresetMode.NEXT_STEP``, the same as ``SyncVectorEnv``'s default).
    """

    task_cls: ClassVar[type[BatchedTask]]
    metadata: dict[str, Any] = {
        "render_modes": ["rgb_array", "ansi"],
        "render_fps": 4,
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(self, num_envs: int = 1, render_mode: str | None = None, **task_options: Any) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode={render_mode!r} is not supported by the vector env; allowed: "
                f"{[None, *self.metadata['render_modes']]}"
            )
        self.task = make_task(self.task_cls, num_envs, task_options)
        self.num_envs = self.task.num_envs
        self.render_mode = render_mode
        self.single_observation_space = self.task.single_observation_space()
        self.single_action_space = spaces.Discrete(self.task.n_actions)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._rngs: list[np.random.Generator] | None = None  # drawn at the first reset
        self._needs_reset = np.ones(self.num_envs, dtype=bool)
        # every env reports every key, so all info masks are the same all-True array (read-only)
        self._all_true = np.ones(self.num_envs, dtype=bool)
        self._all_true.flags.writeable = False
        self._all_envs = np.arange(self.num_envs)

    @property
    def episode_length(self) -> int:
        """Steps of every episode (the tasks' episodes all have this fixed length)."""
        return int(self.task.episode_length)

    def _vector_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {}
        for key, value in self.task.info().items():
            info[key] = value
            info[f"_{key}"] = self._all_true
        return info

    def reset(
        self,
        *,
        seed: int | Sequence[int | None] | None = None,
        options: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is not None or self._rngs is None:
            if seed is None or isinstance(seed, (int, np.integer)):
                seeds = [None if seed is None else int(seed) + i for i in range(self.num_envs)]
            else:
                seeds = list(seed)
                if len(seeds) != self.num_envs:
                    raise ValueError(
                        f"a list of seeds must have num_envs={self.num_envs} entries, got {len(seeds)}"
                    )
            self._rngs = [seeding.np_random(s)[0] for s in seeds]
        self.task.reset(self._all_envs, self._rngs)
        self._needs_reset[:] = False
        return self.task.observation(), self._vector_info()

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._rngs is None:
            raise RuntimeError("call reset() before step()")
        actions = self.task.check_actions(actions)
        restart = np.flatnonzero(self._needs_reset)
        rewards, truncated = self.task.step(actions)
        if restart.size:
            self.task.reset(restart, [self._rngs[i] for i in restart])
            rewards[restart] = 0.0
            truncated[restart] = False
        self._needs_reset = truncated.copy()
        terminated = np.zeros(self.num_envs, dtype=bool)
        return self.task.observation(), rewards, terminated, truncated, self._vector_info()

    def step_lockstep(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`step` for a loop that steps every episode together, from :meth:`reset` to the
        episodes' end, with actions it drew itself: ``(observations, rewards)`` only.

        It skips what such a loop does not use and ``step`` pays for at every step (the action
        checks and the info dict, about a third of the maze's step): ``actions`` must already be
        a (num_envs,) int64 array of valid actions. Where an episode has ended (``step`` would
        autoreset it) it raises instead; the state afterwards is what ``step`` leaves.
        """
        if self._rngs is None:
            raise RuntimeError("call reset() before step_lockstep()")
        if self._needs_reset.any():
            raise RuntimeError("an episode has ended: step_lockstep() steps from reset() to the end only")
        rewards, truncated = self.task.step(actions)
        self._needs_reset = truncated
        return self.task.observation(), rewards

    def get_rng_states(self) -> list[dict[str, Any]]:
        """The per-env generator states (plain dicts), to checkpoint a run bit for bit."""
        if self._rngs is None:
            raise RuntimeError("call reset() before get_rng_states()")
        # numpy's stubs type BitGenerator.state as Mapping; at runtime it is a fresh plain dict
        return [cast(dict[str, Any], rng.bit_generator.state) for rng in self._rngs]

    def set_rng_states(self, states: Sequence[dict[str, Any]]) -> None:
        """Restore generator states saved by :meth:`get_rng_states`."""
        if len(states) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} generator states, got {len(states)}")
        if self._rngs is None:
            self._rngs = [seeding.np_random(0)[0] for _ in range(self.num_envs)]
        for rng, st in zip(self._rngs, states):
            rng.bit_generator.state = st

    def render(self) -> tuple[Any, ...] | None:
        """One frame (or text) per env, as Gymnasium's vector envs return."""
        if self.render_mode == "rgb_array":
            return tuple(self.task.render_rgb(i) for i in range(self.num_envs))
        if self.render_mode == "ansi":
            return tuple(self.task.render_ansi(i) for i in range(self.num_envs))
        return None
