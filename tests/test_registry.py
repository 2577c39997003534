"""Every registered ``bpm/`` id: API checkers, native vector twin, seeding, and registration.

Warnings are escalated to errors in the checker tests; no warning needs to be allowed.
"""

from __future__ import annotations

import importlib
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import bpm_envs
from bpm_envs.batched import BatchedVectorEnv

BPM_IDS = sorted(env_id for env_id in gym.registry if env_id.startswith("bpm/"))
SHORT = 7  # episode length for the autoreset tests: several boundaries in a few steps


def test_the_two_tasks_are_registered():
    assert BPM_IDS == sorted(bpm_envs.ENV_IDS) == ["bpm/CueReward-v0", "bpm/PlasticMaze-v0"]


def render_modes(env_id: str) -> list[str | None]:
    modes = gym.spec(env_id).make().metadata.get("render_modes", [])
    return [None, *[m for m in modes if m != "human"]]  # the window is tested with the renderer


@pytest.mark.parametrize("env_id", BPM_IDS)
def test_gymnasium_and_sb3_checkers_pass_without_warnings(env_id):
    for mode in render_modes(env_id):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            env = gym.make(env_id, render_mode=mode)
            gym_check_env(env.unwrapped)
            sb3_check_env(gym.make(env_id, render_mode=mode), warn=True)
            env.close()


@pytest.mark.parametrize("env_id", BPM_IDS)
def test_make_vec_returns_the_native_twin(env_id):
    venv = gym.make_vec(env_id, num_envs=5)
    assert isinstance(venv.unwrapped, BatchedVectorEnv)
    assert not isinstance(venv.unwrapped, SyncVectorEnv)
    assert gym.spec(env_id).vector_entry_point is not None
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert venv.num_envs == 5
    single = gym.make(env_id)
    assert venv.single_observation_space == single.observation_space
    assert venv.single_action_space == single.action_space
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (5, *single.observation_space.shape) and obs.dtype == np.float32
    sync = gym.make_vec(env_id, num_envs=5, vectorization_mode="sync")
    assert isinstance(sync.unwrapped, SyncVectorEnv)


def assert_info_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def single_rollout(env_id: str, seed: int, actions: np.ndarray, **options):
    """Step a single env with ``actions`` (S,), resetting (unseeded) after each episode end."""
    env = gym.make(env_id, **options)
    obs, info = env.reset(seed=seed)
    steps = [(obs, 0.0, False, False, info)]
    done = False
    for a in actions:
        if done:  # what a NEXT_STEP vector env does with this action: ignore it and reset
            obs, info = env.reset()
            steps.append((obs, 0.0, False, False, info))
            done = False
            continue
        obs, r, term, trunc, info = env.step(int(a))
        steps.append((obs, r, term, trunc, info))
        done = term or trunc
    return steps


@pytest.mark.parametrize("env_id", BPM_IDS)
def test_episode_length_is_public_on_both_faces_and_is_the_truncation_step(env_id):
    env = gym.make(env_id, episode_length=SHORT)
    vec = gym.make_vec(env_id, 2, vectorization_mode="vector_entry_point", episode_length=SHORT)
    assert env.unwrapped.episode_length == vec.unwrapped.episode_length == SHORT
    env.reset(seed=0)
    ends = [env.step(0)[3] for _ in range(SHORT)]
    assert ends == [False] * (SHORT - 1) + [True]


@pytest.mark.parametrize("env_id", BPM_IDS)
def test_same_seed_same_trajectory_single(env_id):
    n_actions = gym.make(env_id).action_space.n
    actions = np.random.default_rng(0).integers(0, n_actions, size=3 * SHORT + 2)
    a = single_rollout(env_id, 11, actions, episode_length=SHORT)
    b = single_rollout(env_id, 11, actions, episode_length=SHORT)
    c = single_rollout(env_id, 12, actions, episode_length=SHORT)
    for (oa, ra, ta, ua, ia), (ob, rb, tb, ub, ib) in zip(a, b):
        np.testing.assert_array_equal(oa, ob)
        assert (ra, ta, ua) == (rb, tb, ub)
        assert_info_equal(ia, ib)
    # and the seed matters: some info (cue ids, reward cell, ...) differs between seeds
    assert any(any(not np.array_equal(ia[k], ic[k]) for k in ia) for (*_, ia), (*_, ic) in zip(a, c))


def vector_rollout(env_id: str, num_envs: int, seed: int, actions: np.ndarray, **options):
    venv = gym.make_vec(env_id, num_envs=num_envs, **options)
    obs, info = venv.reset(seed=seed)
    steps = [(obs, np.zeros(num_envs), np.zeros(num_envs, bool), np.zeros(num_envs, bool), info)]
    for a in actions:
        steps.append(venv.step(a))
    return steps


@pytest.mark.parametrize("env_id", BPM_IDS)
def test_vector_env_equals_single_envs_seeded_alike_across_autoresets(env_id):
    n, seed, n_steps = 4, 100, 3 * SHORT + 3  # crosses 3 autoreset boundaries
    n_actions = gym.make(env_id).action_space.n
    actions = np.random.default_rng(1).integers(0, n_actions, size=(n_steps, n))
    vec = vector_rollout(env_id, n, seed, actions, episode_length=SHORT)
    again = vector_rollout(env_id, n, seed, actions, episode_length=SHORT)
    for (o1, r1, t1, u1, i1), (o2, r2, t2, u2, i2) in zip(vec, again):
        np.testing.assert_array_equal(o1, o2)
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(u1, u2)
        assert_info_equal(i1, i2)
    truncated = np.array([s[3] for s in vec])
    assert truncated.sum() == 3 * n and truncated[SHORT].all()
    for i in range(n):
        single = single_rollout(env_id, seed + i, actions[:, i], episode_length=SHORT)
        assert len(single) == len(vec)
        for step, ((vo, vr, vt, vu, vi), (so, sr, st, su, si)) in enumerate(zip(vec, single)):
            np.testing.assert_array_equal(vo[i], so, err_msg=f"env {i} step {step}")
            assert (vr[i], vt[i], vu[i]) == (sr, st, su), f"env {i} step {step}"
            assert_info_equal({k: v[i] for k, v in vi.items() if not k.startswith("_")}, si)
            assert all(vi[k][i] for k in vi if k.startswith("_"))


@pytest.mark.parametrize("env_id", BPM_IDS)
def test_native_vector_env_equals_sync_vector_env(env_id):
    n, seed, n_steps = 3, 5, 2 * SHORT + 2
    n_actions = gym.make(env_id).action_space.n
    actions = np.random.default_rng(2).integers(0, n_actions, size=(n_steps, n))
    native = vector_rollout(env_id, n, seed, actions, episode_length=SHORT)
    sync = vector_rollout(env_id, n, seed, actions, episode_length=SHORT, vectorization_mode="sync")
    for (o1, r1, t1, u1, _), (o2, r2, t2, u2, _) in zip(native, sync):
        np.testing.assert_array_equal(o1, o2)
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(t1, t2)
        np.testing.assert_array_equal(u1, u2)


def test_registration_is_idempotent():
    specs = {env_id: gym.spec(env_id) for env_id in BPM_IDS}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # re-registering an id would warn "Overriding environment"
        importlib.reload(bpm_envs)
        bpm_envs._register()
        bpm_envs._register()
    assert sorted(e for e in gym.registry if e.startswith("bpm/")) == BPM_IDS
    for env_id, spec in specs.items():
        assert gym.spec(env_id).entry_point == spec.entry_point
        assert gym.spec(env_id).vector_entry_point == spec.vector_entry_point
        gym.make(env_id).reset(seed=0)
