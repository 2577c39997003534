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

One job per module (this package re-exports their public names):

- :mod:`~bpm_agents.evaluation.agents`: :class:`PlasticAgent`, :func:`load_agent`, the acting step;
- :mod:`~bpm_agents.evaluation.envs`: building the agent's env and checking that the agent fits it;
- :mod:`~bpm_agents.evaluation.stats`: :func:`mean_ci95`, :class:`TrialAccuracy`,
  :func:`correct_by_trial`, :class:`EvaluationResult`;
- :mod:`~bpm_agents.evaluation.episodes`: :func:`evaluate`, :func:`run_episode`, :class:`EpisodeTrace`;
- :mod:`~bpm_agents.evaluation.recording`: :func:`record_gif`, :func:`render_episodes`;
- :mod:`~bpm_agents.evaluation.plots`: :func:`plot_modulator` (Fig. 3), :class:`NoModulatorError`.

The cue task's observation layout and ``info`` fields are decoded by :mod:`bpm_envs.cue_reward`
(:func:`~bpm_envs.cue_reward.answers_from_infos` and :func:`~bpm_envs.cue_reward.cue_shown` are
re-exported here). The optional extras (matplotlib, pygame-ce, Pillow, Stable-Baselines3) are
imported only by the calls that need them.
"""

from bpm_agents.checkpoint import CheckpointError
from bpm_agents.devices import resolve_device
from bpm_agents.evaluation.agents import PlasticAgent, load_agent
from bpm_agents.evaluation.episodes import DEFAULT_BATCH_SIZE, EpisodeTrace, evaluate, run_episode
from bpm_agents.evaluation.plots import NoModulatorError, plot_modulator
from bpm_agents.evaluation.recording import record_gif, render_episodes
from bpm_agents.evaluation.stats import Z95, EvaluationResult, TrialAccuracy, correct_by_trial, mean_ci95
from bpm_envs.cue_reward import answers_from_infos, cue_shown
from bpm_envs.extras import MissingExtraError

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "Z95",
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
