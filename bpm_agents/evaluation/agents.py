"""Agents to evaluate: our plastic A2C runs as :class:`PlasticAgent`, loading, and the acting step.

An *agent* is anything with Stable-Baselines3's ``predict(observation, state, episode_start,
deterministic)`` and the attributes ``env_id`` and ``env_kwargs``. Our runs load as
:class:`PlasticAgent`, which also exposes the modulator M(t); other runs (``config.json`` whose
``algo`` is not ``plastic-a2c``) are loaded by ``bpm_agents.sb3.load_agent`` (imported only then).
:func:`make_actor` turns either kind into one batched acting function for the episode loops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from gymnasium import spaces

from bpm_agents.a2c import A2CConfig, build_policy
from bpm_agents.checkpoint import CheckpointError, load_checkpoint
from bpm_agents.devices import resolve_device
from bpm_agents.evaluation.envs import make_env
from bpm_agents.plasticity import PlasticState
from bpm_agents.policy import PlasticActorCritic, sample_with
from bpm_agents.training import ALGO, CHECKPOINT_FILE, read_run_config, trainer_classes
from bpm_envs.extras import as_missing_extra


class PlasticAgent:
    """A trained :class:`PlasticActorCritic` ready to act, with the run's env and config.

    ``predict`` follows Stable-Baselines3's contract; :meth:`act` is the batched acting step used
    by the evaluation's episode loops (through :func:`make_actor`), which also returns M(t).
    """

    algo = ALGO

    def __init__(
        self,
        policy: PlasticActorCritic,
        config: A2CConfig,
        updates_done: int = 0,
        run_dir: str | Path | None = None,
    ) -> None:
        self.policy = policy.eval()
        self.config = config
        self.updates_done = updates_done
        self.run_dir = None if run_dir is None else Path(run_dir)

    @property
    def env_id(self) -> str:
        return self.config.env_id

    @property
    def env_kwargs(self) -> dict[str, Any]:
        return dict(self.config.env_kwargs)

    @property
    def modulated(self) -> bool:
        """Whether the policy has a neuromodulator M(t)."""
        return self.policy.config.plasticity.modulated

    @property
    def device(self) -> torch.device:
        return next(self.policy.parameters()).device

    @property
    def observation_size(self) -> int:
        return self.policy.config.obs_size

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """Stable-Baselines3's ``predict``; see :meth:`PlasticActorCritic.predict`."""
        return self.policy.predict(observation, state, episode_start, deterministic, generator)

    @torch.no_grad()
    def act(
        self,
        obs: np.ndarray,
        state: PlasticState | None,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[np.ndarray, PlasticState, np.ndarray | None]:
        """One step for a batch: obs (B, D) -> actions (B,), next state, M(t) (B,) or None.

        ``state=None`` starts new episodes. Actions are sampled on the CPU from ``generator``, as
        in training, so results do not depend on the device.
        """
        x = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        if state is None:
            state = self.policy.initial_state(x.shape[0], self.device)
        out = self.policy.step(x, state)
        if deterministic:
            actions = out.logits.argmax(-1).cpu()
        else:
            actions = sample_with(out.logits, generator).cpu()
        mod = None if out.modulator is None else out.modulator.float().cpu().numpy()
        return actions.numpy(), out.state, mod


def load_agent(run_dir: str | Path, device: str | torch.device = "cpu") -> Any:
    """Load the policy saved in a run folder, ready to act.

    Returns a :class:`PlasticAgent` for our plastic A2C runs, else whatever
    ``bpm_agents.sb3.load_agent(run_dir, device)`` returns (Stable-Baselines3 runs).

    Raises:
        CheckpointError: missing folder, not a run folder, corrupted or foreign checkpoint, a
            checkpoint for another env or another network. ValueError: bad device.
    """
    device = resolve_device(device)
    meta = read_run_config(run_dir)
    ours = trainer_classes()
    if meta["kind"] == "lm":
        raise CheckpointError(
            f"{run_dir} is a language-model run, not an agent: give its perplexity with "
            f"'evaluate.py {run_dir} --data DIR' (or 'evaluate.py lm {run_dir} --data DIR')"
        )
    if meta["kind"] == "sb3":
        try:
            from bpm_agents.sb3 import load_agent as load_sb3_agent
        except ImportError as exc:
            missing = as_missing_extra(exc, f"loading {run_dir} (trained with {meta['algo']!r})")
            if missing is not None:
                raise missing from None
            raise CheckpointError(
                f"{run_dir} was trained with {meta['algo']!r}; loading it needs "
                f"bpm_agents.sb3, which cannot be imported: {exc}"
            ) from None
        agent = load_sb3_agent(run_dir, device)
        if getattr(agent, "algo", None) is None:
            with contextlib.suppress(AttributeError):  # results name the algorithm
                agent.algo = meta["algo"]
        return agent

    if meta["algo"] not in ours:
        raise CheckpointError(f"{run_dir} was trained with {meta['algo']!r}, not one of {', '.join(ours)}")
    try:
        config = ours[meta["algo"]][0].from_dict(meta["config"]).resolve()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{Path(run_dir) / 'config.json'} holds a bad config: {exc}") from None
    state = load_checkpoint(Path(run_dir) / CHECKPOINT_FILE, map_location=device)
    if state.get("env_id") != config.env_id:
        raise CheckpointError(
            f"checkpoint is for env {state.get('env_id')!r} but the run config says {config.env_id!r}"
        )
    try:
        trainer_state = state["trainer"]
        weights = trainer_state["model"]
        updates_done = int(trainer_state.get("updates_done", 0))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint of {run_dir} has no policy weights ({exc})") from None
    env = make_env(config.env_id, config.env_kwargs)
    try:
        # the bpm tasks: a flat Box of observations, Discrete actions
        obs_size = cast(tuple[int, ...], env.observation_space.shape)[0]
        n_actions = int(cast(spaces.Discrete, env.action_space).n)
    finally:
        env.close()
    policy = build_policy(config, obs_size, n_actions)
    try:
        policy.load_state_dict(weights)
    except (RuntimeError, TypeError, ValueError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint does not fit the run's policy: {first}") from None
    plastic = PlasticAgent(policy.to(device), config, updates_done, run_dir)
    plastic.algo = meta["algo"]
    return plastic


# ---------------------------------------------------------------------------------- acting
Actor = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, "np.ndarray | None"]]


def make_actor(agent: Any, deterministic: bool, generator: torch.Generator) -> Actor:
    """``act(obs (B, D), episode_start (B,) bool) -> (actions (B,), M(t) (B,) or None)``.

    The recurrent state lives in the closure and is reset where ``episode_start`` is True.
    """
    if isinstance(agent, PlasticAgent):
        state: list[PlasticState | None] = [None]

        def act_plastic(obs: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, Any]:
            s = state[0]
            if s is not None and (s.hidden.shape[0] != len(obs) or starts.all()):
                s = None
            elif s is not None and starts.any():
                s = s.reset_where(torch.as_tensor(starts, device=agent.device))
            actions, state[0], mod = agent.act(obs, s, deterministic, generator)
            return actions, mod

        return act_plastic

    sb3_state: list[Any] = [None]

    def act_generic(obs: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, None]:
        actions, sb3_state[0] = agent.predict(
            obs, state=sb3_state[0], episode_start=starts, deterministic=deterministic
        )
        return np.asarray(actions).reshape(len(obs)), None

    return act_generic


@contextlib.contextmanager
def seeded_torch(seed: int) -> Iterator[None]:
    """Seed torch's global generator for agents that sample from it (SB3); restore it after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


__all__ = ["Actor", "PlasticAgent", "load_agent", "make_actor", "seeded_torch"]
