"""Stable-Baselines3 / sb3-contrib peers on the bpm/ tasks: vec-env adapter, training runs, loading.

Three algorithms, named as in ``train.py --algo``:

- ``ppo``: SB3 ``PPO`` with a feed-forward ``MlpPolicy``;
- ``a2c``: SB3 ``A2C`` with a feed-forward ``MlpPolicy`` (SB3 has no recurrent A2C);
- ``recurrent-ppo``: sb3-contrib ``RecurrentPPO`` with an LSTM (``MlpLstmPolicy``).

Environments. SB3 steps a :class:`~stable_baselines3.common.vec_env.VecEnv`. :class:`NativeVecEnv`
adapts our native batched twin (``gym.make_vec(..., vectorization_mode="vector_entry_point")``):
one numpy call steps all ``n_envs`` episodes, where SB3's ``DummyVecEnv`` would loop over
``n_envs`` single envs in Python. The adapter reproduces ``DummyVecEnv`` exactly (same seeds
``seed + i``, same observations, rewards, dones, ``terminal_observation`` and
``TimeLimit.truncated``; tested), so nothing SB3 sees changes, only the speed.

Run folder: the one layout of :mod:`bpm_agents.runs` (kind ``sb3``)::

    config.json      {"kind": "sb3", "algo": "ppo" | "a2c" | "recurrent-ppo", "config": SB3Config fields, ...}
    checkpoint.pt    weights, optimizer, step counters and resume state (bpm_agents.checkpoint)
    progress.csv     one row per update (rollout-and-update cycle)
    tb/              TensorBoard event files

Loading is safe: the model is rebuilt from ``config.json`` and gets the checkpoint's tensors
(``torch.load(weights_only=True)``); no pickled object is ever deserialised. (Folders of earlier
versions hold an SB3 ``checkpoint.zip`` instead; they still load, from its torch entries and JSON
counters only. Do not open foreign SB3 zips with ``PPO.load``: that unpickles, i.e. can run code.)

Modules:

- :mod:`bpm_agents.sb3.adapter`: the env-id check, :class:`NativeVecEnv`, :func:`make_sb3_vec_env`;
- :mod:`bpm_agents.sb3.config`: :data:`ALGOS`, :data:`ALGO_DEFAULTS`, :class:`SB3Config`;
- :mod:`bpm_agents.sb3.models`: :func:`build_model`, :func:`count_parameters`;
- :mod:`bpm_agents.sb3.checkpoints`: saving and loading (:func:`save_model`, the resume state,
  legacy zips, :func:`read_sb3_checkpoint`, :func:`load_model`, :func:`load_agent`);
- :mod:`bpm_agents.sb3.training`: :func:`train` and its CSV columns;
- :mod:`bpm_agents.sb3.cli`: ``bpm train --algo ppo|a2c|recurrent-ppo`` (:func:`train_main`).

Everything is re-exported here, so ``from bpm_agents.sb3 import ...`` works as before.
"""

from __future__ import annotations

from bpm_agents.runs import CHECKPOINT_FILE
from bpm_agents.sb3.adapter import NativeVecEnv, check_bpm_env_id, make_sb3_vec_env
from bpm_agents.sb3.checkpoints import (
    LEGACY_CHECKPOINT,
    RESUME_ENTRY,
    SB3Agent,
    SB3Checkpoint,
    capture_resume_state,
    load_agent,
    load_model,
    load_model_config,
    read_sb3_checkpoint,
    restore_resume_state,
    save_model,
)
from bpm_agents.sb3.checkpoints import _config_body as _config_body
from bpm_agents.sb3.checkpoints import _legacy_zip_counters as _legacy_zip_counters
from bpm_agents.sb3.checkpoints import _load as _load
from bpm_agents.sb3.checkpoints import _native as _native
from bpm_agents.sb3.checkpoints import _read_legacy_resume_state as _read_legacy_resume_state
from bpm_agents.sb3.cli import _PLASTIC as _PLASTIC
from bpm_agents.sb3.cli import PLASTIC_ALGOS, build_parser, train_main
from bpm_agents.sb3.config import ALGO_DEFAULTS, ALGOS, SB3Config
from bpm_agents.sb3.models import build_model, count_parameters
from bpm_agents.sb3.training import _LOG_KEYS as _LOG_KEYS
from bpm_agents.sb3.training import CSV_FIELDS, train
from bpm_agents.sb3.training import _derived_seed as _derived_seed
from bpm_agents.sb3.training import _PeerJob as _PeerJob
from bpm_agents.sb3.training import _RolloutStats as _RolloutStats

__all__ = [
    "ALGOS",
    "ALGO_DEFAULTS",
    "CHECKPOINT_FILE",
    "CSV_FIELDS",
    "LEGACY_CHECKPOINT",
    "PLASTIC_ALGOS",
    "RESUME_ENTRY",
    "NativeVecEnv",
    "SB3Agent",
    "SB3Checkpoint",
    "SB3Config",
    "build_model",
    "build_parser",
    "capture_resume_state",
    "check_bpm_env_id",
    "count_parameters",
    "load_agent",
    "load_model",
    "load_model_config",
    "make_sb3_vec_env",
    "read_sb3_checkpoint",
    "restore_resume_state",
    "save_model",
    "train",
    "train_main",
]
