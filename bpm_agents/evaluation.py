"""Evaluate a trained agent: mean reward with a 95% interval, cue accuracy by trial, GIFs, Fig. 3.

Everything ``evaluate.py`` does is one call here::

    from bpm_agents import evaluation as ev

    agent = ev.load_agent("runs/cue-retro")           # our plastic A2C or a Stable-Baselines3 run
    result = ev.evaluate(agent, episodes=200, seed=0)  # EvaluationResult
    print(result.mean_reward, result.ci95)
    ev.record_gif(agent, "cue.gif", episodes=1)
    ev.plot_modulator(agent, "fig3.png")               # NoModulatorError if the rule has no M(t)

An *agent* is anything with Stable-Baselines3's ``predict(observation, state, episode_start,
deterministic)`` and the attributes ``env_id`` and ``env_kwargs``. Our runs load as
:class:`PlasticAgent`, which also exposes the modulator M(t); other runs (``config.json`` whose
``algo`` is not ``plastic-a2c``) are loaded by ``bpm_agents.sb3.load_agent``.

Seeding: episode ``j`` of an evaluation with seed ``s`` is drawn by env seed ``s + j`` (whatever
the batch size), and actions are sampled from a torch generator seeded with ``s``. Episodes run in
lock-step batches on the env's native vector twin.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import bpm_envs  # noqa: F401  (registers the bpm/ environments)
from bpm_agents.a2c import A2CConfig, build_policy
from bpm_agents.checkpoint import CheckpointError, load_checkpoint
from bpm_agents.devices import resolve_device
from bpm_agents.plasticity import PlasticState
from bpm_agents.policy import PlasticActorCritic
from bpm_agents.training import ALGO, CHECKPOINT_FILE, read_run_config, trainer_classes
from bpm_envs.extras import MissingExtraError, as_missing_extra, require

#: two-sided 95% quantile of the standard normal (normal-approximation interval)
Z95 = 1.96
DEFAULT_BATCH_SIZE = 50


class NoModulatorError(ValueError):
    """The agent has no neuromodulator M(t) to plot (its rule is not ``simple``/``retroactive``)."""


# ---------------------------------------------------------------------------------- agents
class PlasticAgent:
    """A trained :class:`PlasticActorCritic` ready to act, with the run's env and config.

    ``predict`` follows Stable-Baselines3's contract; :meth:`act` is the batched acting step used
    by this module, which also returns M(t).
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
            probs = torch.softmax(out.logits.float(), dim=-1).cpu()
            actions = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
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
    if meta["algo"] not in ours:
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
    env = _make_env(config.env_id, config.env_kwargs)
    try:
        obs_size, n_actions = env.observation_space.shape[0], int(env.action_space.n)
    finally:
        env.close()
    policy = build_policy(config, obs_size, n_actions)
    try:
        policy.load_state_dict(weights)
    except (RuntimeError, TypeError, ValueError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint does not fit the run's policy: {first}") from None
    agent = PlasticAgent(policy.to(device), config, updates_done, run_dir)
    agent.algo = meta["algo"]
    return agent


def _make_env(env_id: str, env_kwargs: dict[str, Any], render_mode: str | None = None) -> gym.Env:
    if env_id not in gym.registry:
        known = sorted(k for k in gym.registry if k.startswith("bpm/"))
        raise ValueError(f"unknown env id {env_id!r}; registered bpm ids: {known}")
    return gym.make(env_id, render_mode=render_mode, disable_env_checker=True, **env_kwargs)


def _env_of(agent: Any, env_id: str | None, env_kwargs: dict[str, Any] | None) -> tuple[str, dict]:
    env_id = agent.env_id if env_id is None else env_id
    env_kwargs = dict(getattr(agent, "env_kwargs", {}) or {}) if env_kwargs is None else env_kwargs
    return env_id, env_kwargs


def _check_fits(agent: Any, env_id: str, obs_shape: tuple[int, ...]) -> None:
    expected = getattr(agent, "observation_size", None)
    if expected is not None and obs_shape != (expected,):
        raise ValueError(
            f"the agent was trained on {agent.env_id!r} with observations of size {expected}, "
            f"but {env_id!r} gives observations of shape {obs_shape}"
        )


# ---------------------------------------------------------------------------------- acting
Actor = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, "np.ndarray | None"]]


def _make_actor(agent: Any, deterministic: bool, generator: torch.Generator) -> Actor:
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
def _seeded_torch(seed: int) -> Iterator[None]:
    """Seed torch's global generator for agents that sample from it (SB3); restore it after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ---------------------------------------------------------------------------------- statistics
def mean_ci95(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and half-width of its 95% interval, normal approximation: 1.96 * s / sqrt(n).

    ``s`` is the sample standard deviation (ddof=1); with a single value the half-width is NaN.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("mean_ci95 needs at least one value, got none")
    mean = float(x.mean())
    if x.size == 1:
        return mean, math.nan
    return mean, float(Z95 * x.std(ddof=1) / math.sqrt(x.size))


@dataclass
class TrialAccuracy:
    """Cue task: answers and correct answers by trial index within the episode.

    Arrays have one entry per trial index 0..K-1: ``answers`` (how many Go answers were given in
    that trial over all episodes), ``correct``, and ``fraction`` = correct / answers (NaN if none).
    """

    answers: np.ndarray
    correct: np.ndarray

    @property
    def fraction(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.answers > 0, self.correct / np.maximum(self.answers, 1), np.nan)

    @property
    def overall(self) -> float:
        total = int(self.answers.sum())
        return float(self.correct.sum() / total) if total else math.nan

    def rows(self) -> list[dict[str, Any]]:
        """One dict per trial index: trial, answers, correct, fraction."""
        return [
            {"trial": k, "answers": int(a), "correct": int(c), "fraction": None if a == 0 else float(c / a)}
            for k, (a, c) in enumerate(zip(self.answers, self.correct))
        ]


def correct_by_trial(trial: np.ndarray, graded: np.ndarray) -> TrialAccuracy:
    """Count Go answers and correct ones by trial index.

    Args:
        trial: (E, T) int, trial index of the step on which each action was taken.
        graded: (E, T) int, the env's ``answer_correct`` for that action: 1 right Go answer,
            0 wrong Go answer, -1 not a Go step.
    """
    trial, graded = np.asarray(trial), np.asarray(graded)
    if trial.shape != graded.shape:
        raise ValueError(f"trial and graded must have one shape, got {trial.shape} and {graded.shape}")
    answered = graded >= 0
    idx = trial[answered].astype(np.int64)
    if idx.size == 0:
        return TrialAccuracy(np.zeros(0, np.int64), np.zeros(0, np.int64))
    if idx.min() < 0:
        raise ValueError(f"trial indices must be >= 0, got {int(idx.min())}")
    k = int(idx.max()) + 1
    answers = np.bincount(idx, minlength=k)
    correct = np.bincount(idx, weights=(graded[answered] == 1), minlength=k).astype(np.int64)
    return TrialAccuracy(answers, correct)


def answers_from_infos(infos: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Pair each Go answer with its trial from a cue episode's info sequence.

    ``infos[0]`` is the info of ``reset`` and ``infos[t + 1]`` the info of the ``t``-th ``step``
    (single env: scalars; vector env: arrays (B,)). ``trial`` describes the step shown with the
    observation, so the action taken at step t belongs to ``infos[t]["trial"]``, while
    ``answer_correct`` grades the action just taken, so its grade is ``infos[t + 1]``'s.

    Returns:
        trial (B, T) and graded (B, T); B = 1 for a single env.
    """
    if len(infos) < 2:
        raise ValueError(f"need the reset info and at least one step info, got {len(infos)} infos")
    trial = np.stack([np.atleast_1d(i["trial"]) for i in infos[:-1]], axis=1)
    graded = np.stack([np.atleast_1d(i["answer_correct"]) for i in infos[1:]], axis=1)
    return trial, graded.astype(np.int64)


def _is_cue_info(info: dict[str, Any]) -> bool:
    return "answer_correct" in info and "trial" in info


# ---------------------------------------------------------------------------------- evaluation
@dataclass
class EvaluationResult:
    """Outcome of :func:`evaluate`.

    ``ci95`` is the half-width of the normal-approximation 95% interval of the mean episode reward
    (1.96 * sample std / sqrt(episodes)). ``trial_accuracy`` is set for the cue task only.
    """

    env_id: str
    algo: str | None
    episodes: int
    seed: int
    deterministic: bool
    episode_length: int
    episode_rewards: np.ndarray
    mean_reward: float
    ci95: float
    std_reward: float
    trial_accuracy: TrialAccuracy | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ci_low(self) -> float:
        return self.mean_reward - self.ci95

    @property
    def ci_high(self) -> float:
        return self.mean_reward + self.ci95

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (NaN becomes None)."""

        def clean(v: float) -> float | None:
            return None if not math.isfinite(v) else float(v)

        out: dict[str, Any] = {
            "env_id": self.env_id,
            "algo": self.algo,
            "episodes": self.episodes,
            "seed": self.seed,
            "deterministic": self.deterministic,
            "episode_length": self.episode_length,
            "mean_reward": clean(self.mean_reward),
            "ci95_half_width": clean(self.ci95),
            "ci95_low": clean(self.ci_low),
            "ci95_high": clean(self.ci_high),
            "ci_method": "normal approximation: mean +- 1.96 * sample std (ddof=1) / sqrt(n)",
            "std_reward": clean(self.std_reward),
            "min_reward": float(self.episode_rewards.min()),
            "max_reward": float(self.episode_rewards.max()),
            "episode_rewards": [float(r) for r in self.episode_rewards],
        }
        if self.trial_accuracy is not None:
            out["fraction_correct"] = clean(self.trial_accuracy.overall)
            out["correct_by_trial"] = self.trial_accuracy.rows()
        out.update(self.extra)
        return out

    def format_table(self) -> str:
        """A compact human-readable summary."""
        lines = [
            f"{self.env_id}  algo={self.algo}  episodes={self.episodes}  seed={self.seed}  "
            f"{'deterministic' if self.deterministic else 'sampled'} actions  "
            f"T={self.episode_length}",
            f"mean episode reward  {self.mean_reward:.3f} +- {self.ci95:.3f}  "
            f"(95% CI [{self.ci_low:.3f}, {self.ci_high:.3f}]; normal approx., "
            f"1.96*std/sqrt(n))",
            f"std {self.std_reward:.3f}  min {self.episode_rewards.min():.3f}  "
            f"max {self.episode_rewards.max():.3f}",
        ]
        acc = self.trial_accuracy
        if acc is not None and acc.answers.size:
            lines.append(
                f"fraction of correct answers: {acc.overall:.3f} "
                f"({int(acc.correct.sum())}/{int(acc.answers.sum())})"
            )
            lines.append("by trial index within the episode (correct fraction / answers):")
            frac = acc.fraction
            per_row = 12
            for start in range(0, acc.answers.size, per_row):
                ks = range(start, min(start + per_row, acc.answers.size))
                lines.append("  trial   " + "".join(f"{k:>6d}" for k in ks))
                lines.append(
                    "  correct " + "".join("     -" if np.isnan(frac[k]) else f"{frac[k]:6.2f}" for k in ks)
                )
                lines.append("  n       " + "".join(f"{int(acc.answers[k]):>6d}" for k in ks))
        return "\n".join(lines)


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


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
    episodes = _check_count("episodes", episodes, 1)
    batch_size = _check_count("batch_size", batch_size, 1)
    env_id, env_kwargs = _env_of(agent, env_id, env_kwargs)
    if env_id not in gym.registry:
        known = sorted(k for k in gym.registry if k.startswith("bpm/"))
        raise ValueError(f"unknown env id {env_id!r}; registered bpm ids: {known}")
    generator = torch.Generator().manual_seed(int(seed))
    rewards_all: list[np.ndarray] = []
    trials: list[np.ndarray] = []
    grades: list[np.ndarray] = []
    lengths: list[int] = []
    cue = False
    with _seeded_torch(int(seed)):
        for start in range(0, episodes, batch_size):
            n = min(batch_size, episodes - start)
            envs = gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point", **env_kwargs)
            try:
                _check_fits(agent, env_id, envs.single_observation_space.shape)
                act = _make_actor(agent, deterministic, generator)
                obs, info = envs.reset(seed=int(seed) + start)
                cue = _is_cue_info(info)
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


# ---------------------------------------------------------------------------------- one episode
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
    env_id, env_kwargs = _env_of(agent, env_id, env_kwargs)
    if generator is None:
        generator = torch.Generator().manual_seed(int(seed))
    env = _make_env(env_id, env_kwargs, render_mode)
    try:
        _check_fits(agent, env_id, env.observation_space.shape)
        act = _make_actor(agent, deterministic, generator)
        obs, info = env.reset(seed=int(seed))
        observations, infos, actions, rewards, mods, frames = [obs], [info], [], [], [], []

        def grab() -> bool:
            if render_mode != "rgb_array":
                return False
            frame = env.render()
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
            stop = grab() or _window_closed(env)
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


def _window_closed(env: gym.Env) -> bool:
    # the env's HumanWindow is private; stop the episode when the user closes it
    window = getattr(env.unwrapped, "_window", None)
    return bool(getattr(window, "closed_by_user", False))


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

    episodes = _check_count("episodes", episodes, 1)
    env_id, env_kwargs = _env_of(agent, env_id, env_kwargs)
    generator = torch.Generator().manual_seed(int(seed))
    frames: list[np.ndarray] = []
    totals = []
    with _seeded_torch(int(seed)):
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
        fps = _render_fps(env_id, env_kwargs)
    return save_gif(frames, path, fps=fps), totals


def _render_fps(env_id: str, env_kwargs: dict[str, Any]) -> float:
    env = _make_env(env_id, env_kwargs)
    try:
        return float(env.metadata.get("render_fps", 10))
    finally:
        env.close()


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

    episodes = _check_count("episodes", episodes, 1)
    env_id, env_kwargs = _env_of(agent, env_id, env_kwargs)
    probe = _make_env(env_id, env_kwargs)
    modes, fps = probe.metadata.get("render_modes", []), probe.metadata.get("render_fps", 10)
    probe.close()
    generator = torch.Generator().manual_seed(int(seed))
    totals: list[float] = []
    window = None if "human" in modes else HumanWindow(title=f"{env_id}", fps=fps)
    try:
        with _seeded_torch(int(seed)):
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


# ---------------------------------------------------------------------------------- Fig. 3
def cue_shown(observations: np.ndarray, infos: Sequence[dict[str, Any]], cue_bits: int) -> np.ndarray:
    """Id of the cue shown at each step of a single cue episode, -1 on blank and Go steps.

    Uses only the public observation (cue bits non-zero when a cue is shown) and the info's
    ``pair`` (the trial's 2 cue ids in the order shown): the k-th cue step of a trial shows
    ``pair[k]``. ``observations`` (T, D) and ``infos`` (T entries) describe the same steps.
    """
    shown = np.any(observations[:, :cue_bits] != 0, axis=1)
    trial = np.array([int(i["trial"]) for i in infos])
    pair = np.array([np.asarray(i["pair"]) for i in infos]).reshape(len(infos), 2)
    count = np.cumsum(shown)  # cue steps so far, this one included
    new_trial = np.r_[True, trial[1:] != trial[:-1]]
    # cue steps counted before each trial began, carried forward over the trial
    idx = np.maximum.accumulate(np.where(new_trial, np.arange(len(trial)), 0))
    before_trial = (count - shown)[idx]
    order = np.clip(count - before_trial - 1, 0, 1)
    return np.where(shown, pair[np.arange(len(trial)), order], -1)


def plot_modulator(
    agent: Any,
    path: str | Path,
    seed: int = 0,
    deterministic: bool = False,
    env_id: str | None = None,
    env_kwargs: dict[str, Any] | None = None,
) -> tuple[Path, EpisodeTrace]:
    """Draw the paper's Fig. 3 for one episode (env seed ``seed``) and save it to ``path``.

    Cue task: a raster of the cue shown at each step (target cue marked, Go steps as vertical
    lines), the reward per step and M(t). Maze: reward hits and M(t).

    Raises:
        NoModulatorError: the agent has no modulator (rule ``none``/``hebbian``, or an SB3 model).
    """
    if not getattr(agent, "modulated", False):
        what = getattr(agent, "algo", None)
        rule = getattr(getattr(agent, "config", None), "rule", None)
        desc = f"rule {rule!r}" if rule is not None else f"algo {what!r}"
        raise NoModulatorError(
            f"this agent ({desc}) has no neuromodulator M(t), so there is nothing to plot; "
            "only the 'simple' and 'retroactive' rules have one"
        )
    matplotlib = require("matplotlib", "the modulator plot")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trace = run_episode(agent, seed, deterministic, env_id, env_kwargs)
    T = len(trace.rewards)
    steps = np.arange(T)
    obs = trace.observations[:T]
    infos = trace.infos[:T]
    mods = trace.modulators
    cue = _is_cue_info(infos[0])
    nrows = 3 if cue else 2
    fig, axes = plt.subplots(
        nrows,
        1,
        figsize=(11, 2.2 * nrows + 0.6),
        sharex=True,
        gridspec_kw={"height_ratios": [1.4, 1, 1.2][-nrows:]},
    )
    ax_i = 0
    if cue:
        ax = axes[0]
        # observation layout: cue bits, Go bit, previous reward, previous action (2), t/T
        cue_bits = obs.shape[1] - 5
        shown = cue_shown(obs, infos, cue_bits)
        target = int(infos[0]["target"])
        go = np.array([bool(i["go"]) for i in infos])
        ids = sorted(set(shown[shown >= 0].tolist()) | {target})
        for g in steps[go]:
            ax.axvline(g, color="0.75", lw=0.8, zorder=0)
        is_t = shown == target
        ax.scatter(
            steps[(shown >= 0) & ~is_t],
            shown[(shown >= 0) & ~is_t],
            marker="s",
            s=14,
            color="tab:blue",
            label="cue shown",
        )
        ax.scatter(steps[is_t], shown[is_t], marker="s", s=14, color="tab:red", label="target cue shown")
        ax.set_yticks(ids, [f"cue {k}" + (" (target)" if k == target else "") for k in ids])
        ax.set_ylim(min(ids) - 0.7, max(ids) + 0.7)
        ax.set_title("cue shown at each step (grey lines: Go steps)")
        ax.legend(loc="upper right", fontsize=7, ncol=2)
        ax_i = 1
    ax = axes[ax_i]
    pos, neg = trace.rewards > 0, trace.rewards < 0
    ax.vlines(steps[pos], 0, trace.rewards[pos], color="tab:green", lw=1.5)
    ax.vlines(steps[neg], 0, trace.rewards[neg], color="tab:red", lw=1.5)
    ax.axhline(0, color="0.5", lw=0.6)
    ax.set_ylabel("reward")
    ax.set_title(f"reward of the action at step t (total {trace.total_reward:g})")
    ax = axes[ax_i + 1]
    assert mods is not None  # modulated agents report M(t) at every step
    ax.plot(steps, mods, color="k", lw=1)
    for s in steps[pos | neg]:
        ax.axvline(
            s + 1, color="tab:green" if trace.rewards[s] > 0 else "tab:red", lw=0.6, alpha=0.5, zorder=0
        )
    ax.axhline(0, color="0.5", lw=0.6)
    ax.set_ylabel("M(t)")
    ax.set_xlabel("step t")
    ax.set_title("modulator M(t) (coloured lines: the step at which a reward is seen as input)")
    rule = getattr(getattr(agent, "config", None), "rule", "")
    fig.suptitle(f"{agent.env_id} {rule}: one episode, env seed {seed}")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out, trace


__all__ = [
    "CheckpointError",
    "MissingExtraError",
    "EpisodeTrace",
    "EvaluationResult",
    "NoModulatorError",
    "PlasticAgent",
    "TrialAccuracy",
    "answers_from_infos",
    "correct_by_trial",
    "cue_shown",
    "evaluate",
    "load_agent",
    "mean_ci95",
    "plot_modulator",
    "record_gif",
    "render_episodes",
    "resolve_device",
    "run_episode",
]
