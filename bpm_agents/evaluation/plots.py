"""The paper's Fig. 3: one episode's inputs, rewards and neuromodulator M(t) (:func:`plot_modulator`).

matplotlib (the ``render`` extra) is imported only when a plot is drawn, and the figure is drawn on
its own Agg canvas: the process-wide backend and any pyplot session of the caller stay unchanged.
The cue task's observations and infos are decoded by the helpers of :mod:`bpm_envs.cue_reward`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bpm_agents.evaluation.episodes import EpisodeTrace, run_episode
from bpm_envs.cue_reward import cue_shown, go_steps, is_cue_info, target_cue
from bpm_envs.extras import require


class NoModulatorError(ValueError):
    """The agent has no neuromodulator M(t) to plot (its rule is not ``simple``/``retroactive``)."""


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
    require("matplotlib", "the modulator plot")
    # A figure of its own on the Agg canvas: pyplot and the process-wide backend stay untouched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    trace = run_episode(agent, seed, deterministic, env_id, env_kwargs)
    T = len(trace.rewards)
    steps = np.arange(T)
    obs = trace.observations[:T]
    infos = trace.infos[:T]
    mods = trace.modulators
    cue = is_cue_info(infos[0])
    nrows = 3 if cue else 2
    fig = Figure(figsize=(11, 2.2 * nrows + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, 1, sharex=True, gridspec_kw={"height_ratios": [1.4, 1, 1.2][-nrows:]})
    ax_i = 0
    if cue:
        ax = axes[0]
        shown = cue_shown(obs, infos)
        target = target_cue(infos[0])
        go = go_steps(infos)
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
    return out, trace


__all__ = ["NoModulatorError", "plot_modulator"]
