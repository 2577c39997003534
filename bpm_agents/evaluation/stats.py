"""Statistics of an evaluation: mean with its 95% interval, cue answers by trial, the result record.

Everything here is plain numpy on numbers already collected; nothing runs an env.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: two-sided 95% quantile of the standard normal (normal-approximation interval)
Z95 = 1.96


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
        graded: (E, T) int, the grade of that action (as paired by
            :func:`bpm_envs.cue_reward.answers_from_infos`): 1 right Go answer,
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


__all__ = ["Z95", "EvaluationResult", "TrialAccuracy", "correct_by_trial", "mean_ci95"]
