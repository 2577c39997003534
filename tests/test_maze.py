"""Rules, determinism, vector/single equivalence and statistics of bpm/PlasticMaze-v0."""

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import re
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import bpm_envs  # noqa: F401  (registers the ids)
from bpm_envs.maze import PlasticMazeEnv, PlasticMazeVectorEnv

ENV_ID = "bpm/PlasticMaze-v0"
# up, down, left, right as (d_row, d_col), written from the issue, not imported
DELTAS = {0: (-1, 0), 1: (1, 0), 2: (0, -1), 3: (0, 1)}


def reference_map(size: int) -> np.ndarray:
    """Wall map from the paper's words, cell by cell: border, both-even pillars, centre free."""
    side = size + 2
    walls = np.zeros((side, side), dtype=bool)
    for r in range(side):
        for c in range(side):
            border = r in (0, side - 1) or c in (0, side - 1)
            walls[r, c] = border or (r % 2 == 0 and c % 2 == 0)
    walls[side // 2, side // 2] = False
    return walls


def assert_info_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


# ----------------------------------------------------------------------------- API conformance
@pytest.mark.parametrize("render_mode", [None, "rgb_array", "ansi", "human"])
def test_gymnasium_and_sb3_checkers_pass_without_warnings(render_mode):
    env = gym.make(ENV_ID, render_mode=render_mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env.unwrapped)
        sb3_check_env(env.unwrapped, warn=True)
    env.close()


def test_spaces_and_map_match_the_paper():
    env = gym.make(ENV_ID)
    assert env.action_space == gym.spaces.Discrete(4)
    space = env.observation_space
    assert space.shape == (9 + 1 + 4 + 1,) and space.dtype == np.float32
    np.testing.assert_array_equal(space.low[:9], 0.0)
    np.testing.assert_array_equal(space.high[:9], 1.0)
    assert space.low[9] == -10.0 and space.high[9] == 10.0
    walls = env.unwrapped.task.walls
    np.testing.assert_array_equal(walls, reference_map(9))
    assert walls.shape == (11, 11)
    assert walls[1:-1, 1:-1].sum() == 16  # pillars
    assert (~walls).sum() == 65 and not walls[5, 5]
    assert gym.make(ENV_ID, wall_penalty=-0.5, reward=0.25).observation_space.high[9] == 0.5


@pytest.mark.parametrize("size", [5, 7, 11])
def test_other_sizes_follow_the_same_map_rule(size):
    env = PlasticMazeEnv(size=size)
    np.testing.assert_array_equal(env.task.walls, reference_map(size))
    _, info = env.reset(seed=0)
    np.testing.assert_array_equal(info["agent_pos"], [(size + 1) // 2] * 2)


# ----------------------------------------------------------------------------- determinism
def rollout(env, seed, actions):
    obs, info = env.reset(seed=seed)
    record = [(obs, 0.0, info)]
    for a in actions:
        obs, reward, terminated, truncated, info = env.step(a)
        assert not terminated
        record.append((obs, reward, info))
    return record


def test_same_seed_same_trajectory_and_seeds_differ():
    actions = np.random.default_rng(0).integers(0, 4, size=200)
    a = rollout(gym.make(ENV_ID), 7, actions)
    b = rollout(gym.make(ENV_ID), 7, actions)
    for (oa, ra, ia), (ob, rb, ib) in zip(a, b):
        np.testing.assert_array_equal(oa, ob)
        assert ra == rb
        assert_info_equal(ia, ib)
    reward_cells = {tuple(gym.make(ENV_ID).reset(seed=s)[1]["reward_pos"]) for s in range(20)}
    assert len(reward_cells) > 5


def test_make_vec_returns_native_twin_declaring_autoreset():
    venv = gym.make_vec(ENV_ID, num_envs=30)
    assert isinstance(venv, PlasticMazeVectorEnv)
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert venv.num_envs == 30
    assert venv.observation_space.shape == (30, 15)


def test_vector_equals_single_envs_step_for_step_across_autoreset():
    n, length, seed = 5, 9, 11
    venv = gym.make_vec(ENV_ID, num_envs=n, episode_length=length)
    singles = [gym.make(ENV_ID, episode_length=length) for _ in range(n)]
    vobs, vinfo = venv.reset(seed=seed)
    for i, env in enumerate(singles):
        obs, info = env.reset(seed=seed + i)
        np.testing.assert_array_equal(vobs[i], obs)
        assert_info_equal({k: vinfo[k][i] for k in info}, info)
    rng = np.random.default_rng(3)
    needs_reset = np.zeros(n, dtype=bool)
    resets_seen = 0
    for _ in range(3 * (length + 1) + 1):  # crosses the autoreset boundary three times
        actions = rng.integers(0, 4, size=n)
        vobs, vrew, vterm, vtrunc, vinfo = venv.step(actions)
        for i, env in enumerate(singles):
            if needs_reset[i]:  # next-step autoreset: the action is ignored, reward 0
                obs, info = env.reset()
                reward, terminated, truncated = 0.0, False, False
                resets_seen += 1
            else:
                obs, reward, terminated, truncated, info = env.step(actions[i])
            np.testing.assert_array_equal(vobs[i], obs)
            assert vrew[i] == np.float32(reward)
            assert (vterm[i], vtrunc[i]) == (terminated, truncated)
            assert_info_equal({k: vinfo[k][i] for k in info}, info)
        needs_reset = vtrunc.copy()
    assert resets_seen == 3 * n


def test_step_lockstep_equals_step_and_refuses_to_autoreset():
    n, length = 4, 7
    a, b = (gym.make_vec(ENV_ID, num_envs=n, episode_length=length) for _ in range(2))
    a.reset(seed=5)
    b.reset(seed=5)
    actions = np.random.default_rng(0).integers(0, 4, size=(length, n))
    for t in range(length):
        obs, rew, _, trunc, _ = a.step(actions[t])
        lobs, lrew = b.step_lockstep(actions[t])
        np.testing.assert_array_equal(lobs, obs)
        np.testing.assert_array_equal(lrew, rew)
    assert trunc.all()
    with pytest.raises(RuntimeError, match="episode has ended"):
        b.step_lockstep(actions[0])
    # after a reset both continue alike (step autoresets a; b is reset by hand)
    a.step(actions[0])
    obs, _ = b.reset()
    np.testing.assert_array_equal(a.step(actions[1])[0], b.step_lockstep(actions[1])[0])


# ----------------------------------------------------------------------------- rules
@pytest.mark.parametrize("wall_penalty", [0.0, -0.1])
def test_rules_against_an_independent_simulation(wall_penalty):
    """Every step of 64 random episodes checked cell by cell against the written rules."""
    n, length = 64, 200
    walls = reference_map(9)
    venv = PlasticMazeVectorEnv(num_envs=n, wall_penalty=wall_penalty)
    obs, info = venv.reset(seed=100)
    np.testing.assert_array_equal(info["agent_pos"], np.full((n, 2), 5))
    reward_pos = info["reward_pos"].copy()
    assert not walls[reward_pos[:, 0], reward_pos[:, 1]].any()
    assert not np.all(reward_pos == 5, axis=1).any()
    rng = np.random.default_rng(5)
    pos = info["agent_pos"].copy()
    hits = np.zeros(n, dtype=int)
    bumps = np.zeros(n, dtype=int)
    totals = np.zeros(n)
    counts = {"hit": 0, "bump": 0, "move": 0}
    for t in range(length):
        actions = rng.integers(0, 4, size=n)
        obs, reward, terminated, truncated, info = venv.step(actions)
        assert venv.observation_space.contains(obs)
        np.testing.assert_array_equal(info["reward_pos"], reward_pos)  # fixed for the episode
        for i in range(n):
            dr, dc = DELTAS[int(actions[i])]
            target = (pos[i, 0] + dr, pos[i, 1] + dc)
            new = tuple(info["agent_pos"][i])
            if walls[target]:
                counts["bump"] += 1
                bumps[i] += 1
                assert new == tuple(pos[i]) and info["bumped"][i] and not info["hit"][i]
                assert reward[i] == np.float32(wall_penalty)
            elif target == tuple(reward_pos[i]):
                counts["hit"] += 1
                hits[i] += 1
                assert info["hit"][i] and not info["bumped"][i] and reward[i] == 10.0
                assert not walls[new], "teleported into a wall"
                assert new != tuple(reward_pos[i]), "teleported onto the reward cell"
            else:
                counts["move"] += 1
                assert new == target and reward[i] == 0.0
                assert not info["hit"][i] and not info["bumped"][i]
            r, c = new
            np.testing.assert_array_equal(obs[i, :9], walls[r - 1 : r + 2, c - 1 : c + 2].ravel())
            expected_tail = np.zeros(6, dtype=np.float32)
            expected_tail[0] = reward[i]
            expected_tail[1 + actions[i]] = 1.0
            expected_tail[5] = (t + 1) / length
            np.testing.assert_allclose(obs[i, 9:], expected_tail, rtol=1e-6)
        pos = info["agent_pos"].copy()
        totals += reward
        np.testing.assert_array_equal(info["hits"], hits)
        assert not terminated.any()
        assert truncated.all() == (t == length - 1)
    assert min(counts.values()) > 50  # every branch was exercised many times
    # reward only on a hit (plus the bump penalty when there is one)
    np.testing.assert_allclose(totals, 10.0 * hits + wall_penalty * bumps, rtol=1e-5)


def test_reward_cell_uniform_over_free_cells_except_centre():
    walls = reference_map(9)
    n = 64 * 100
    _, info = PlasticMazeVectorEnv(num_envs=n, episode_length=1).reset(seed=0)
    cells, counts = np.unique(info["reward_pos"], axis=0, return_counts=True)
    expected = {(r, c) for r in range(11) for c in range(11) if not walls[r, c]} - {(5, 5)}
    assert {tuple(c) for c in cells} == expected
    # 64 cells, 100 expected each: a chi-square with 63 dof stays far below 130 (p ~ 1e-6)
    chi2 = ((counts - 100.0) ** 2 / 100.0).sum()
    assert chi2 < 130


def test_teleport_targets_uniform_over_free_cells_except_reward():
    """Teleport targets drawn for one episode: all 64 allowed cells, the centre included."""
    task = PlasticMazeEnv(episode_length=6400).task
    task.begin_episodes(np.array([0]), [np.random.default_rng(1)])
    side = task.side
    reward = divmod(int(task.reward_cell[0]), side)
    targets = [divmod(int(x), side) for x in task.teleport[0]]
    walls = reference_map(9)
    expected = {(r, c) for r in range(11) for c in range(11) if not walls[r, c]} - {reward}
    cells, counts = np.unique(np.array(targets), axis=0, return_counts=True)
    assert {tuple(c) for c in cells} == expected and (5, 5) in expected
    assert ((counts - 100.0) ** 2 / 100.0).sum() < 130


def test_random_policy_scores_about_7_7_per_episode():
    """Paper: a uniformly random walk scores about 7.7 per episode on the 11x11 array."""
    n = 10_000
    venv = gym.make_vec(ENV_ID, num_envs=n)
    venv.reset(seed=2024)
    rng = np.random.default_rng(2024)
    total = np.zeros(n)
    for _ in range(200):
        _, reward, _, truncated, _ = venv.step(rng.integers(0, 4, size=n))
        total += reward
    assert truncated.all()
    mean, stderr = total.mean(), total.std(ddof=1) / np.sqrt(n)
    assert 0.05 < stderr < 0.15
    assert abs(mean - 7.7) < 4 * stderr, (mean, stderr)


def test_episode_over_requires_reset():
    env = gym.make(ENV_ID, episode_length=3).unwrapped
    env.reset(seed=0)
    for _ in range(3):
        *_, truncated, _ = env.step(0)
    assert truncated
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("action", [4, -1, 1.5])
def test_invalid_single_action_raises(action):
    env = gym.make(ENV_ID).unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match=rf"(?=.*{re.escape(str(action))})(?=.*0\.\.3)"):
        env.step(action)


def test_invalid_actions_in_a_batch_raise():
    venv = gym.make_vec(ENV_ID, num_envs=3)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=r"4.*0\.\.3"):
        venv.step(np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"-1.*0\.\.3"):
        venv.step(np.array([-1, 0, 1]))
    with pytest.raises(ValueError, match=r"\(3,\).*\(4,\)"):
        venv.step(np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"\(3,\).*\(3, 1\)"):
        venv.step(np.zeros((3, 1), dtype=int))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        env = gym.make(ENV_ID).unwrapped
        env.reset(seed=0)
        env.step(np.array([0, 1]))


@pytest.mark.parametrize(
    "options, pattern",
    [
        ({"size": 8}, r"size.*odd integer >= 5.*8"),
        ({"size": 3}, r"size.*odd integer >= 5.*3"),
        ({"size": 9.0}, r"size.*odd integer >= 5.*9\.0"),
        ({"episode_length": 0}, r"episode_length.*>= 1.*0"),
        ({"episode_length": -5}, r"episode_length.*>= 1.*-5"),
        ({"reward": 0}, r"reward.*> 0.*0"),
        ({"reward": float("nan")}, r"reward.*finite.*nan"),
        ({"wall_penalty": 0.1}, r"wall_penalty.*<= 0.*0\.1"),
    ],
)
def test_bad_options_raise_value_error_naming_the_value(options, pattern):
    with pytest.raises(ValueError, match=pattern):
        gym.make(ENV_ID, **options)
    with pytest.raises(ValueError, match=pattern):
        gym.make_vec(ENV_ID, num_envs=2, **options)


@pytest.mark.parametrize("size", [9, 11])
def test_reference_levels_match_the_experiments_constants(size):
    """The random walk and the shortest-path oracle, measured afresh, agree with MAZE_LEVELS."""
    from bpm_agents.experiments.definitions import MAZE_LEVELS
    from bpm_envs.maze import build_walls
    from bpm_envs.maze_levels import distances, play

    walls = build_walls(size)
    dist = distances(walls)
    centre = (size + 2) // 2 * (size + 2) + (size + 2) // 2
    assert dist[centre, centre] == 0 and dist[centre, centre + 1] == 1
    assert dist[centre, size + 2 + 1] == size - 1  # to the first interior cell: (size-1)/2 up and left
    assert (dist[walls.ravel()] == -1).all()
    for policy, key, tol in (("random", "random walk", 0.12), ("oracle", "oracle", 0.8)):
        r = play(policy, 4000, seed=size, size=size)
        stderr = r.std(ddof=1) / np.sqrt(len(r))
        assert abs(r.mean() - MAZE_LEVELS[size][key]) < max(4 * stderr, tol), (policy, r.mean(), stderr)
