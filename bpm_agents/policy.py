"""Recurrent actor-critic: a PlasticRNN core with policy and value heads.

The modulator head (M(t) from the new activity) lives with the plastic synapses of the core, see
:mod:`bpm_agents.plasticity`. ``step`` is for acting (one time step); ``unroll`` is for learning
(a whole recorded observation sequence, with autograd). The plastic state is explicit and must be
zero at every episode start: ``initial_state`` for a fresh batch, ``PlasticState.reset_where`` or
the ``episode_starts`` argument for the elements whose episode starts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from bpm_agents.networks import PlasticRNN
from bpm_agents.plasticity import PlasticityConfig, PlasticState


@dataclass(frozen=True)
class PolicyConfig:
    """Everything needed to rebuild a policy: sizes, the plasticity rule, and whether the value
    head reads the hidden state through a stop-gradient (``detach_value``: the value loss then
    trains the value head only, as a separate critic would, and the network learns from the
    policy loss alone)."""

    obs_size: int
    n_actions: int
    hidden_size: int
    plasticity: PlasticityConfig = field(default_factory=PlasticityConfig)
    detach_value: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PolicyConfig:
        d = dict(d)
        d["plasticity"] = PlasticityConfig(**d["plasticity"])
        return cls(**d)


def sample_actions(logits: Tensor, uniforms: Tensor) -> Tensor:
    """Sample one action per row by inverse CDF: the first action whose cumulative probability
    exceeds the row's uniform draw.

    Args:
        logits: (B, A) policy logits. uniforms: (B,) draws in [0, 1).
    Returns:
        (B,) int64 actions. The fused acting kernel samples the same way (in float64).
    """
    cdf = torch.softmax(logits.double(), dim=-1).cumsum(-1)
    taken = (cdf <= uniforms.to(cdf).unsqueeze(-1)).sum(-1)
    return taken.clamp(max=logits.shape[-1] - 1)


def sample_with(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """:func:`sample_actions` with fresh uniforms from ``generator`` (a CPU generator, or the
    global one if ``None``): (B, A) logits -> (B,) actions on the logits' device."""
    uniforms = torch.rand(logits.shape[0], generator=generator, dtype=torch.float64)
    return sample_actions(logits.cpu(), uniforms).to(logits.device)


class EpisodeActor(Protocol):
    """Acts B lock-step episodes from the zero state, one step per call (see ``episode_actor``)."""

    def step(self, obs: np.ndarray) -> np.ndarray:
        """obs (B, D) -> sampled actions (B,) int64."""
        ...

    @property
    def modulators(self) -> Tensor | None:
        """(B, steps so far) modulators, or ``None`` for unmodulated rules."""
        ...

    def record(self) -> Any:
        """What learning may reuse (an ``ActingRecord``), or ``None``."""
        ...


class _ReferenceActor:
    """Acting op by op with :meth:`PlasticActorCritic.step`: the definition the fused Actor matches."""

    def __init__(self, policy: PlasticActorCritic, batch: int, length: int, uniforms: Tensor) -> None:
        self.policy, self.uniforms, self.t = policy, uniforms, 0
        self.device = next(policy.parameters()).device
        self.state = policy.initial_state(batch, self.device)
        self._mods: list[Tensor] = []

    def step(self, obs: np.ndarray) -> np.ndarray:
        out = self.policy.step(
            torch.from_numpy(np.asarray(obs)).to(self.device), self.state, impl="reference"
        )
        self.state = out.state
        if out.modulator is not None:
            self._mods.append(out.modulator.cpu())
        actions = sample_actions(out.logits.cpu(), self.uniforms[:, self.t])
        self.t += 1
        return actions.numpy()

    @property
    def modulators(self) -> Tensor | None:
        return torch.stack(self._mods, dim=1) if self._mods else None

    def record(self) -> None:
        return None


class StepOutput(NamedTuple):
    """Result of one acting step: logits (B, A), value (B,), modulator (B,) or None, new state."""

    logits: Tensor
    value: Tensor
    modulator: Tensor | None
    state: PlasticState


class UnrollOutput(NamedTuple):
    """Result of a replay: logits (B, T, A), values (B, T), modulators (B, T) or None, final state."""

    logits: Tensor
    values: Tensor
    modulators: Tensor | None
    state: PlasticState


class PlasticActorCritic(nn.Module):
    """Actor-critic policy whose recurrent connections are plastic within each episode."""

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        self.config = config
        self.core = PlasticRNN(config.obs_size, config.hidden_size, config.plasticity)
        self.policy_head = nn.Linear(config.hidden_size, config.n_actions)
        self.value_head = nn.Linear(config.hidden_size, 1)

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> PlasticState:
        """Zero hidden activity and traces for ``batch_size`` new episodes."""
        return self.core.initial_state(batch_size, device)

    def heads(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """Policy logits (..., A) and values (...) of hidden activities (..., N)."""
        value_input = hidden.detach() if self.config.detach_value else hidden
        return self.policy_head(hidden), self.value_head(value_input).squeeze(-1)

    def step(self, obs: Tensor, state: PlasticState, impl: str = "auto") -> StepOutput:
        """Act on one observation per element: obs (B, D); ``impl`` as in :meth:`PlasticRNN.step`."""
        state, m = self.core.step(obs, state, impl=impl)
        return StepOutput(*self.heads(state.hidden), None if m is None else m.squeeze(-1), state)

    def unroll(
        self,
        obs: Tensor,
        state: PlasticState,
        episode_starts: Tensor | None = None,
        impl: str = "auto",
    ) -> UnrollOutput:
        """Replay a sequence obs (B, T, D); ``episode_starts`` (B, T) bool zeroes the state there."""
        hidden, mods, state = self.core.unroll(obs, state, episode_starts, impl=impl)
        return UnrollOutput(*self.heads(hidden), mods, state)

    @torch.no_grad()
    def episode_actor(self, batch: int, length: int, uniforms: Tensor, impl: str = "auto") -> EpisodeActor:
        """An actor for ``batch`` new episodes of ``length`` steps, sampling with ``uniforms``.

        Args:
            batch: B. length: T.
            uniforms: (B, T) float64 draws in [0, 1); step t samples with column t
                (:func:`sample_actions`).
            impl: ``auto`` (the fused kernel where it applies: CPU, float32/64, compiler,
                <= 64 actions; else the reference), ``fast`` (the kernel or ValueError),
                ``reference`` or ``chunked`` (:meth:`step` op by op; chunking only concerns
                learning).
        Returns:
            An :class:`EpisodeActor`; the fused one records what :meth:`unroll_recorded` needs.
        """
        if impl not in ("auto", "fast", "reference", "chunked"):
            raise ValueError(f"impl must be one of auto, fast, reference, chunked; got {impl!r}")
        if impl in ("auto", "fast"):
            from bpm_agents.ops import plastic_rnn  # late: the kernel builds at first use

            try:
                return plastic_rnn.Actor(
                    self.core, self.policy_head.weight, self.policy_head.bias, batch, length, uniforms
                )
            except ValueError:
                if impl == "fast":
                    raise
        return _ReferenceActor(self, batch, length, uniforms)

    def unroll_recorded(self, obs: Tensor, record: Any) -> UnrollOutput:
        """Like :meth:`unroll` from the zero state, reusing the forward done while acting.

        ``record`` is ``EpisodeActor.record()`` of the fused actor that acted on ``obs`` (B, T, D)
        with the current parameters; only the backward runs. The final state is not kept
        (``state`` is ``None``).
        """
        from bpm_agents.ops import plastic_rnn

        hidden, mods = plastic_rnn.unroll_recorded(self.core, obs, record)
        return UnrollOutput(*self.heads(hidden), mods, None)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ SB3-style acting
    @torch.no_grad()
    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """Stable-Baselines3's ``predict`` contract, so ``evaluate_policy`` works on our agents.

        Args:
            observation: (B, D) or (D,) observations.
            state: the recurrent state returned by the previous call (numpy arrays
                hidden (B, N), hebb, elig), or ``None`` at the first call.
            episode_start: (B,) bool, True where an episode starts (its state is zeroed).
            deterministic: argmax instead of sampling.
            generator: torch generator for sampling (seeded behaviour).
        Returns:
            actions (B,) or a scalar for a single observation, and the next state.
        """
        device = next(self.parameters()).device
        obs = torch.as_tensor(np.asarray(observation), dtype=torch.float32, device=device)
        single = obs.dim() == 1
        if single:
            obs = obs.unsqueeze(0)
        if obs.dim() != 2 or obs.shape[1] != self.config.obs_size:
            raise ValueError(
                f"observation must have shape (B, {self.config.obs_size}) or "
                f"({self.config.obs_size},), got {tuple(np.shape(observation))}"
            )
        batch = obs.shape[0]
        if state is None:
            plastic_state = self.initial_state(batch, device)
        else:
            plastic_state = PlasticState(*(torch.as_tensor(s, device=device) for s in state))
        if episode_start is not None:
            starts = torch.as_tensor(np.asarray(episode_start, dtype=bool).reshape(batch), device=device)
            plastic_state = plastic_state.reset_where(starts)
        out = self.step(obs, plastic_state)
        if deterministic:
            actions = out.logits.argmax(-1)
        else:
            actions = sample_with(out.logits, generator)
        next_state = tuple(s.cpu().numpy() for s in out.state)
        acts = actions.cpu().numpy()
        return (acts[0] if single else acts), next_state
