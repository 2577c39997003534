"""Saving and loading SB3 runs: checkpoints with resume state, legacy zips, :func:`load_agent`.

Loading is safe: the model is rebuilt from ``config.json`` and gets the checkpoint's tensors
(``torch.load(weights_only=True)``); no pickled object is ever deserialised (see
:mod:`bpm_agents.sb3`).
"""

from __future__ import annotations

import io
import json
import pickle
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv, VecMonitor

from bpm_agents.checkpoint import CheckpointError, load_checkpoint, load_failure, save_checkpoint
from bpm_agents.runs import CHECKPOINT_FILE, CONFIG_FILE, read_run_meta
from bpm_agents.sb3.adapter import NativeVecEnv
from bpm_agents.sb3.config import ALGOS, SB3Config
from bpm_agents.sb3.models import build_model

if TYPE_CHECKING:
    from bpm_agents.sb3.training import _RolloutStats

#: the checkpoint of folders written before the one checkpoint format (read only)
LEGACY_CHECKPOINT = "checkpoint.zip"
#: the entry of a legacy checkpoint.zip that held the resume state
RESUME_ENTRY = "bpm_resume.pt"


def save_model(model: BaseAlgorithm, path: str | Path, resume_state: dict[str, Any] | None = None) -> None:
    """Save ``model`` as one checkpoint of :mod:`bpm_agents.checkpoint` (atomic, tensors only).

    It holds SB3's ``get_parameters()`` (policy weights and optimizer state), the step counters
    and ``resume_state`` (see :func:`capture_resume_state`), so they are always replaced together.
    """
    save_checkpoint(
        path,
        {
            "kind": "sb3",
            "parameters": model.get_parameters(),
            "num_timesteps": int(model.num_timesteps),
            "n_updates": int(model._n_updates),
            "resume": resume_state,
        },
    )


def _native(venv: VecEnv) -> NativeVecEnv:
    inner = venv
    while not isinstance(inner, NativeVecEnv):
        inner = inner.venv  # type: ignore[attr-defined]
    return inner


def capture_resume_state(model: BaseAlgorithm, venv: VecEnv) -> dict[str, Any]:
    """Everything besides weights and optimizer that the next SB3 update depends on.

    SB3 samples actions from torch's global generator and shuffles minibatches with numpy's;
    ``learn`` continues from the last observation and episode starts (and RecurrentPPO from its
    last LSTM states); the envs are mid-episode. The envs are captured as the start of their
    running episodes plus the actions since (:meth:`NativeVecEnv.episode_record`), replayed on
    resume. The rollout buffer is refilled from scratch at every update, so it is not needed.
    """
    # numpy's stubs allow a dict (a non-MT19937 generator); the global one is MT19937: the legacy tuple
    keys, pos, has_gauss, cached = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())[1:]
    py_version, py_state, py_gauss = random.getstate()
    lstm = getattr(model, "_last_lstm_states", None)
    return {
        "num_timesteps": int(model.num_timesteps),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy_rng": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python_rng": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
        "episode_record": _native(venv).episode_record() if model._last_obs is not None else None,
        "last_episode_starts": (
            None
            if model._last_episode_starts is None
            else torch.from_numpy(np.asarray(model._last_episode_starts, dtype=bool))
        ),
        "lstm_states": None if lstm is None else [t.detach().cpu().clone() for pair in lstm for t in pair],
    }


def _read_legacy_resume_state(path: Path) -> dict[str, Any] | None:
    """The :data:`RESUME_ENTRY` of a legacy checkpoint zip (``weights_only`` load), or ``None``."""
    try:
        with zipfile.ZipFile(path) as zf:
            if RESUME_ENTRY not in zf.namelist():
                return None
            data = zf.read(RESUME_ENTRY)
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable SB3 checkpoint: {exc}") from None
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # bad bytes in our own entry
        reason = "contains disallowed objects" if isinstance(exc, pickle.UnpicklingError) else "is corrupted"
        raise CheckpointError(f"{path}: its resume state {RESUME_ENTRY} {reason}") from None


def restore_resume_state(
    model: BaseAlgorithm, venv: VecEnv, state: dict[str, Any], stats: _RolloutStats | None = None
) -> None:
    """Undo :func:`capture_resume_state`: generators, envs, last observation, LSTM states."""
    try:
        record = state["episode_record"]
        if record is not None:
            obs, rewards_so_far, steps = _native(venv).replay(record)
            monitor = venv if isinstance(venv, VecMonitor) else None
            if monitor is not None:  # the episode statistics SB3 logs count from the episode start
                monitor.episode_returns = rewards_so_far.astype(np.float32)
                monitor.episode_lengths = np.full(venv.num_envs, steps, dtype=np.int32)
            if stats is not None:
                stats.running = rewards_so_far.copy()
            model._last_obs = obs
            model._last_episode_starts = state["last_episode_starts"].numpy().copy()
        if state["lstm_states"] is not None:
            from sb3_contrib.common.recurrent.type_aliases import RNNStates

            t = [x.to(model.device) for x in state["lstm_states"]]
            # RecurrentPPO's attribute; SB3's BaseAlgorithm stub does not declare it
            model._last_lstm_states = RNNStates((t[0], t[1]), (t[2], t[3]))  # type: ignore[attr-defined]
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        rng = state["numpy_rng"]
        np.random.set_state(
            (
                "MT19937",
                rng["keys"].numpy().astype(np.uint32),
                rng["pos"],
                rng["has_gauss"],
                rng["cached_gaussian"],
            )
        )
        py = state["python_rng"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as exc:
        raise CheckpointError(f"the checkpoint's resume state does not fit this run: {exc}") from None


def _legacy_zip_counters(path: Path) -> dict[str, int]:
    """The plain-JSON step counters of a legacy SB3 zip, read without unpickling anything."""
    try:
        with zipfile.ZipFile(path) as zf:
            data = json.loads(zf.read("data"))
        return {"num_timesteps": int(data["num_timesteps"]), "n_updates": int(data["_n_updates"])}
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable SB3 checkpoint: {exc}") from None


@dataclass
class SB3Checkpoint:
    """What a run folder's checkpoint holds (either format)."""

    parameters: Any  # a dict of state dicts, or the legacy zip's path (SB3 reads its torch entries)
    num_timesteps: int
    n_updates: int
    resume: dict[str, Any] | None


def read_sb3_checkpoint(run_dir: str | Path, device: str | torch.device = "cpu") -> SB3Checkpoint:
    """The checkpoint of an SB3 run folder: ``checkpoint.pt``, or a legacy ``checkpoint.zip``.

    Raises:
        CheckpointError: missing, corrupted or foreign file.
    """
    run_dir = Path(run_dir)
    path, legacy = run_dir / CHECKPOINT_FILE, run_dir / LEGACY_CHECKPOINT
    if not path.is_file() and legacy.is_file():
        counters = _legacy_zip_counters(legacy)
        return SB3Checkpoint(str(legacy), counters["num_timesteps"], counters["n_updates"],
                             _read_legacy_resume_state(legacy))  # fmt: skip
    data = load_checkpoint(path, map_location=device)
    try:
        if data.get("kind") != "sb3":
            raise KeyError("kind")
        return SB3Checkpoint(data["parameters"], int(data["num_timesteps"]), int(data["n_updates"]),
                             data.get("resume"))  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} is not an SB3 peer's checkpoint (no {exc})") from None


def load_model(
    run_dir: str | Path, device: str | torch.device = "cpu", env: VecEnv | None = None
) -> tuple[SB3Config, BaseAlgorithm]:
    """Rebuild the model of one of *our* SB3 run folders, without unpickling anything.

    The model is built from ``config.json``; its weights, optimizer state and step counters come
    from the checkpoint (a ``weights_only`` load). ``env`` defaults to a one-env
    :class:`NativeVecEnv` (enough to act).

    Raises:
        CheckpointError: not an SB3 run folder of ours, or a missing / corrupted checkpoint.
    """
    config, model, _ = _load(run_dir, device, env)
    return config, model


def _load(
    run_dir: str | Path, device: str | torch.device, env: VecEnv | None
) -> tuple[SB3Config, BaseAlgorithm, SB3Checkpoint]:
    config = load_model_config(run_dir)
    saved = read_sb3_checkpoint(run_dir, device)
    if env is None:
        env = VecMonitor(NativeVecEnv(config.env_id, 1, config.env_kwargs))
    model = build_model(config, env, device)
    try:
        model.set_parameters(saved.parameters, exact_match=True, device=device)
    except Exception as exc:  # torch / zipfile raise many types for bad bytes; all mean "unusable"
        if isinstance(exc, pickle.UnpicklingError) and isinstance(saved.parameters, str):
            reason = load_failure(saved.parameters, exc)  # never pass on "weights_only=False" advice
        else:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(
            f"the checkpoint of {run_dir} could not be loaded into a {config.algo} model: {reason}"
        ) from None
    model.num_timesteps = saved.num_timesteps
    model._n_updates = saved.n_updates
    return config, model, saved


class SB3Agent:
    """A trained SB3 model behind the same acting contract as our ``PlasticActorCritic.predict``.

    Attributes:
        algo, env_id, env_kwargs: from the run's config.
        recurrent: whether ``predict`` returns and expects a state (RecurrentPPO's LSTM ``(h, c)``,
            each ``(n_layers, B, H)``).
        model: the SB3 model.
    """

    def __init__(self, config: SB3Config, model: BaseAlgorithm) -> None:
        self.config = config
        self.model = model
        self.algo = config.algo
        self.env_id = config.env_id
        self.env_kwargs = dict(config.env_kwargs)
        self.recurrent = config.algo == "recurrent-ppo"

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """SB3's contract: observation (B, D) or (D,) -> actions (B,) (or a scalar), next state.

        For ``recurrent-ppo`` pass the returned state back at the next call and
        ``episode_start`` (B,) bool, True where an episode starts (its LSTM state is zeroed);
        ``state=None`` means all-zero. Feed-forward models return ``None`` as state.
        """
        return self.model.predict(
            observation, state=state, episode_start=episode_start, deterministic=deterministic
        )


def load_agent(run_dir: str | Path, device: str | torch.device = "cpu") -> SB3Agent:
    """Load the SB3 agent of a run folder for acting (see :class:`SB3Agent`); only our own folders."""
    config, model = load_model(run_dir, device)
    model.policy.set_training_mode(False)
    return SB3Agent(config, model)


def _config_body(config: SB3Config) -> dict[str, Any]:
    body = config.to_dict()
    del body["algo"]  # lives at the top level of config.json
    return body


def load_model_config(run_dir: str | Path) -> SB3Config:
    """The resolved :class:`SB3Config` of an SB3 run folder."""
    meta = read_run_meta(run_dir)
    if meta.algo not in ALGOS:
        raise CheckpointError(
            f"{run_dir} was trained with {meta.algo!r}, not an SB3 algorithm ({', '.join(ALGOS)})"
        )
    try:
        body = meta.config
        if not isinstance(body, dict):
            raise ValueError(f"SB3Config must be a JSON object of settings, got {json.dumps(body)}")
        return SB3Config.from_dict({"algo": meta.algo, **body}).resolve()
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{Path(run_dir) / CONFIG_FILE} holds a bad SB3 config: {exc}") from None
