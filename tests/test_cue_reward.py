"""Rules of bpm/CueReward-v0, checked from what the agent sees (observations) against independent
expectations: trial structure parsed from the observation stream, binomial tolerances for the
random draws, and an exact renewal computation for the number of Go steps per episode."""

from __future__ import annotations

import itertools
import re
from collections import Counter

import gymnasium as gym
import numpy as np
import pytest

import bpm_envs  # noqa: F401  (registers the ids)
from bpm_envs import rendering
from bpm_envs.cue_reward import CueRewardEnv, CueRewardVectorEnv

BITS = 20
GO = BITS
PREV_R = BITS + 1
PREV_A = slice(BITS + 2, BITS + 4)
TIME = BITS + 4
Z = 4.5  # width of the statistical tolerances, in standard errors


def run_episodes(n_envs: int, rounds: int, seed: int, policy: str = "random", **options):
    """Run ``n_envs * rounds`` whole episodes; return per-episode arrays.

    ``obs`` (E, T+1, D), ``act`` (E, T), ``rew`` (E, T), ``trunc`` (E, T),
    ``info[key]`` (E, T+1, ...).
    ``policy`` is "random" (seeded) or "oracle" (answers ``info['target_in_pair']``).
    """
    T = options.get("episode_length", 120)
    venv = CueRewardVectorEnv(num_envs=n_envs, **options)
    rng = np.random.default_rng(seed + 1)
    obs_l, act_l, rew_l, trunc_l, info_l = [], [], [], [], []
    for r in range(rounds):
        obs, info = venv.reset(seed=seed if r == 0 else None)
        obs_r, act_r, rew_r, trunc_r, info_r = [obs], [], [], [], [info]
        for _ in range(T):
            if policy == "random":
                a = rng.integers(0, 2, size=n_envs)
            else:
                a = info["target_in_pair"].astype(np.int64)
            obs, rew, term, trunc, info = venv.step(a)
            assert not term.any()
            obs_r.append(obs), act_r.append(a), rew_r.append(rew), trunc_r.append(trunc)
            info_r.append(info)
        obs_l.append(np.stack(obs_r, 1))
        act_l.append(np.stack(act_r, 1))
        rew_l.append(np.stack(rew_r, 1))
        trunc_l.append(np.stack(trunc_r, 1))
        info_l.append({k: np.stack([i[k] for i in info_r], 1) for k in info_r[0]})
    info = {k: np.concatenate([i[k] for i in info_l]) for k in info_l[0] if not k.startswith("_")}
    return {
        "obs": np.concatenate(obs_l),
        "act": np.concatenate(act_l),
        "rew": np.concatenate(rew_l),
        "trunc": np.concatenate(trunc_l),
        "info": info,
        "T": T,
    }


def parse_trials(obs: np.ndarray, bits: int, T: int) -> list[dict]:
    """Trials of one episode read from its observations (T+1, D) alone.

    A trial ends one step after its Go step and the next starts right after. Returns the trials
    whose Go step lies inside the episode: start, go step, length, and the cue steps with patterns.
    """
    go_steps = np.flatnonzero(obs[:T, bits] == 1.0)
    trials, start = [], 0
    for g in go_steps:
        middle = obs[start + 1 : g, :bits]
        shown = np.flatnonzero(np.any(middle != 0, axis=1))
        trials.append(
            {
                "start": start,
                "go": int(g),
                "length": int(g) + 2 - start,
                "cue_steps": start + 1 + shown,
                "patterns": [tuple(middle[i]) for i in shown],
                "middle": len(middle),
            }
        )
        start = int(g) + 2
    return trials


def expected_go_steps(T: int) -> float:
    """E[number of Go steps in steps 0..T-1]: trials of length L ~ U{5..8}, Go at L-2."""
    p_start = np.zeros(T + 8)
    p_start[0] = 1.0
    expected = 0.0
    for s in range(T):
        for L in range(5, 9):
            p = p_start[s] / 4
            if s + L - 2 < T:
                expected += p
            p_start[s + L] += p
    return expected


@pytest.fixture(scope="module")
def random_run():
    return run_episodes(n_envs=100, rounds=4, seed=123)


def test_trial_structure_from_observations(random_run):
    obs, info, T = random_run["obs"], random_run["info"], random_run["T"]
    lengths, blanks, placements = Counter(), Counter(), Counter()
    n_trials = 0
    for e in range(len(obs)):
        trials = parse_trials(obs[e], BITS, T)
        starts = np.flatnonzero(info["trial_start"][e, :T])
        assert starts.tolist()[: len(trials)] == [tr["start"] for tr in trials]
        for k, tr in enumerate(trials):
            n_trials += 1
            s, g = tr["start"], tr["go"]
            assert 5 <= tr["length"] <= 8
            lengths[tr["length"]] += 1
            # blank first step; exactly 2 distinct cues among the middle steps; blank after Go
            assert not np.any(obs[e, s, : BITS + 1]), "a trial must open with a blank step"
            assert len(tr["patterns"]) == 2 and tr["patterns"][0] != tr["patterns"][1]
            blanks[tr["middle"] - 2] += 1
            placements[(tr["length"], *(tr["cue_steps"] - s - 1))] += 1
            if g + 1 < T:
                assert not np.any(obs[e, g + 1, : BITS + 1]), "the step after Go must be blank"
            assert np.all(info["trial"][e, s : min(g + 2, T)] == k)
            assert info["go"][e, g] and info["go"][e, :T].sum() == len(trials)
    assert n_trials > 5000
    # lengths 5..8 uniform (so 0..3 blanks among the cues)
    assert sorted(lengths) == [5, 6, 7, 8]
    assert sorted(blanks) == [0, 1, 2, 3]
    for L in range(5, 9):
        assert abs(lengths[L] / n_trials - 0.25) < Z * np.sqrt(0.25 * 0.75 / n_trials)
    # the 2 cues are shuffled with the blanks: the placements of 2 cues among the L-3 middle
    # slots are equally likely
    for L in range(5, 9):
        options = list(itertools.combinations(range(L - 3), 2))
        p = 1 / len(options)
        for pair in options:
            freq = placements[(L, *pair)] / lengths[L]
            assert abs(freq - p) <= Z * np.sqrt(p * (1 - p) / lengths[L]), (L, pair, freq)


def test_cues_distinct_pm1_and_pair_ids_consistent(random_run):
    obs, info, T = random_run["obs"], random_run["info"], random_run["T"]
    for e in range(len(obs)):
        cue_of: dict[int, tuple] = {}
        for tr in parse_trials(obs[e], BITS, T):
            ids = info["pair"][e, tr["start"]]
            assert ids[0] != ids[1]
            for cue_id, pattern in zip(ids.tolist(), tr["patterns"]):
                assert set(pattern) <= {-1.0, 1.0}
                assert cue_of.setdefault(cue_id, pattern) == pattern
        assert set(cue_of) <= {0, 1, 2, 3}
        assert len(set(cue_of.values())) == len(cue_of), "two cue ids share a bit pattern"
        assert 0 <= info["target"][e, 0] < 4 and np.all(info["target"][e] == info["target"][e, 0])


def test_target_in_pair_half_the_time_and_pairs_uniform(random_run):
    info, T = random_run["info"], random_run["T"]
    starts = info["trial_start"][:, :T]
    pairs = info["pair"][:, :T][starts]  # (n_trials, 2)
    target = info["target"][:, :T][starts]
    in_pair = info["target_in_pair"][:, :T][starts]
    np.testing.assert_array_equal(in_pair, np.any(pairs == target[:, None], axis=1))
    n = len(in_pair)
    assert abs(in_pair.mean() - 0.5) < Z * np.sqrt(0.25 / n)
    # shuffled: when present, the target is shown first half the time
    first = pairs[in_pair, 0] == target[in_pair]
    assert abs(first.mean() - 0.5) < Z * np.sqrt(0.25 / len(first))
    # given target present, the partner is each of the 3 non-targets w.p. 1/3; given absent,
    # each of the 3 pairs of non-targets w.p. 1/3 (non-targets numbered relative to the target)
    rel = (pairs - target[:, None]) % 4
    partner = np.where(rel[:, 0] == 0, rel[:, 1], rel[:, 0])[in_pair]
    absent = np.sort(rel[~in_pair], axis=1)
    for group, keys in ((partner, [1, 2, 3]), (absent[:, 0] * 4 + absent[:, 1], [6, 7, 11])):
        m = len(group)
        assert sorted(np.unique(group).tolist()) == keys
        for key in keys:
            assert abs(np.mean(group == key) - 1 / 3) < Z * np.sqrt(2 / 9 / m)


def test_reward_only_on_go_and_plus_one_iff_right(random_run):
    obs, act, rew = random_run["obs"], random_run["act"], random_run["rew"]
    info, T = random_run["info"], random_run["T"]
    go = obs[:, :T, GO] == 1.0
    assert np.all(rew[~go] == 0.0)
    right = act == info["target_in_pair"][:, :T]
    np.testing.assert_array_equal(rew[go], np.where(right[go], 1.0, -1.0))
    # answer_correct grades the action just taken (info of step t+1)
    graded = info["answer_correct"][:, 1:]
    np.testing.assert_array_equal(graded[~go], -1)
    np.testing.assert_array_equal(graded[go], right[go].astype(np.int8))
    assert np.all(info["answer_correct"][:, 0] == -1)


def test_previous_reward_action_and_time_inputs(random_run):
    obs, act, rew, T = random_run["obs"], random_run["act"], random_run["rew"], random_run["T"]
    assert obs.shape[2] == 25
    np.testing.assert_array_equal(obs[:, 0, PREV_R], 0.0)
    np.testing.assert_array_equal(obs[:, 0, PREV_A], 0.0)
    np.testing.assert_array_equal(obs[:, 1:, PREV_R], rew)
    one_hot = np.eye(2, dtype=np.float32)[act]
    np.testing.assert_array_equal(obs[:, 1:, PREV_A], one_hot)
    time = (np.arange(T + 1) / T).astype(np.float32)
    np.testing.assert_array_equal(obs[:, :, TIME], np.broadcast_to(time, obs.shape[:2]))
    # the final observation shows a blank step
    np.testing.assert_array_equal(obs[:, T, : BITS + 1], 0.0)
    assert random_run["trunc"][:, -1].all() and not random_run["trunc"][:, :-1].any()


def test_go_count_and_oracle_ceiling():
    expected = expected_go_steps(120)
    assert 18.0 < expected < 18.6  # about 18.5 trials per 120 steps, as in the paper
    run = run_episodes(n_envs=200, rounds=2, seed=7, policy="oracle")
    per_episode = run["rew"].sum(1)
    go_count = (run["obs"][:, :120, GO] == 1.0).sum(1)
    np.testing.assert_array_equal(per_episode, go_count)  # the oracle is always right
    stderr = go_count.std() / np.sqrt(len(go_count))
    assert abs(go_count.mean() - expected) < Z * stderr


def test_random_policy_averages_zero_reward():
    run = run_episodes(n_envs=500, rounds=4, seed=99)
    per_episode = run["rew"].sum(1)
    assert len(per_episode) == 2000
    stderr = per_episode.std(ddof=1) / np.sqrt(len(per_episode))
    assert 0.05 < stderr < 0.2  # about sqrt(18.5 / 2000)
    assert abs(per_episode.mean()) < Z * stderr


def test_fixed_cues_are_one_hot_and_the_same_every_episode():
    run = run_episodes(n_envs=40, rounds=1, seed=5, fixed_cues=True)
    obs, info = run["obs"], run["info"]
    assert obs.shape[2] == 4 + 5
    eye = np.eye(4, dtype=np.float32)
    for e in range(len(obs)):
        for tr in parse_trials(obs[e], 4, 120):
            for cue_id, pattern in zip(info["pair"][e, tr["start"]], tr["patterns"]):
                np.testing.assert_array_equal(pattern, eye[cue_id])
    assert set(info["target"][:, 0].tolist()) == {0, 1, 2, 3}  # target still drawn per episode
    env = CueRewardEnv(fixed_cues=True)
    np.testing.assert_array_equal(env.observation_space.low[:5], 0.0)
    assert CueRewardEnv(fixed_cues=True, cue_bits=4).observation_space.shape == (9,)
    assert CueRewardEnv(fixed_cues=True, n_cues=5).observation_space.shape == (10,)


@pytest.mark.parametrize("n_cues,cue_bits", [(16, 4), (4, 70)])
def test_cues_distinct_at_full_capacity_and_very_long_cues(n_cues, cue_bits):
    env = CueRewardEnv(n_cues=n_cues, cue_bits=cue_bits, episode_length=1500)
    obs, info = env.reset(seed=3)
    cue_of: dict[int, tuple] = {}
    pair, first = info["pair"], True
    for _ in range(1500):
        if np.any(obs[:cue_bits]):
            cue_id = int(pair[0] if first else pair[1])
            assert cue_of.setdefault(cue_id, tuple(obs[:cue_bits])) == tuple(obs[:cue_bits])
            first = False
        obs, _, _, _, info = env.step(0)
        if info["trial_start"]:
            pair, first = info["pair"], True
    assert len(cue_of) == n_cues
    assert len(set(cue_of.values())) == n_cues
    assert all(set(p) <= {-1.0, 1.0} for p in cue_of.values())


def test_short_episode_and_three_cues():
    env = CueRewardEnv(n_cues=3, episode_length=3)
    obs, info = env.reset(seed=0)
    assert info["trial_start"] and info["trial"] == 0 and not info["go"]
    for t in range(3):
        obs, r, term, trunc, info = env.step(1)
        assert r == 0.0 and not term and trunc == (t == 2)  # no Go step before step 3
    assert obs[-1] == 1.0
    with pytest.raises(RuntimeError):
        env.step(0)


def test_rendering():
    env = CueRewardEnv(render_mode="rgb_array", episode_length=30)
    _, info = env.reset(seed=1)
    frames = [env.render()]
    shown_steps = []
    for t in range(30):
        obs, *_ = env.step(t % 2)
        frame = env.render()
        assert frame.dtype == np.uint8 and frame.shape == frames[0].shape and frame.shape[2] == 3
        if np.any(obs[:BITS]):
            # the top row's cells show the cue bits: light for +1, dark for -1
            # (cells of 24 px right of the 104-px label column, under the 40-px header)
            centres = frame[40 + 12, 104 + 12 : 104 + 24 * BITS : 24]
            light, dark = rendering.COLORS["free"], rendering.COLORS["wall"]
            want = np.where(obs[:BITS, None] > 0, light, dark)
            np.testing.assert_array_equal(centres, want)
            shown_steps.append(t)
        frames.append(frame)
    assert shown_steps
    text = CueRewardEnv(render_mode="ansi")
    text.reset(seed=1)
    line = text.render()
    assert isinstance(line, str) and "\n" not in line and line.startswith("t=  0/120")
    with pytest.raises(ValueError, match="human"):
        CueRewardEnv(render_mode="human")


def test_gym_make_passes_options():
    env = gym.make("bpm/CueReward-v0", n_cues=5, cue_bits=8, episode_length=17)
    assert env.observation_space.shape == (13,)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (13,)


@pytest.mark.parametrize("action", [2, -1, 0.5])
def test_invalid_action_raises(action):
    env = CueRewardEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match=re.escape(str(action))):
        env.step(action)
    venv = CueRewardVectorEnv(num_envs=3)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=re.escape(str(action))):
        venv.step(np.array([0, action, 1]))


@pytest.mark.parametrize("shape", [(4,), (2,), (3, 1), ()])
def test_wrong_shaped_batch_of_actions_raises(shape):
    venv = CueRewardVectorEnv(num_envs=3)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=re.escape(str(shape))):
        venv.step(np.zeros(shape, dtype=np.int64))


@pytest.mark.parametrize(
    "options,needle",
    [
        ({"n_cues": 5, "cue_bits": 2}, "n_cues=5"),
        ({"n_cues": 2}, "2"),
        ({"n_cues": 0}, "0"),
        ({"episode_length": 0}, "episode_length must be an integer >= 1, got 0"),
        ({"episode_length": -3}, "-3"),
        ({"cue_bits": 0}, "cue_bits"),
        ({"fixed_cues": True, "cue_bits": 20}, "cue_bits=20"),
        ({"fixed_cues": "yes"}, "yes"),
    ],
)
def test_bad_options_raise(options, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        CueRewardEnv(**options)
    with pytest.raises(ValueError, match=re.escape(needle)):
        CueRewardVectorEnv(num_envs=2, **options)


# ----------------------------------------------------------------------------- reading obs and info
def test_observation_layout_helpers_by_hand():
    from bpm_envs.cue_reward import NON_CUE_INPUTS, cue_bits_of, cue_visible

    assert NON_CUE_INPUTS == 5
    assert cue_bits_of(25) == 20 and cue_bits_of(np.zeros((3, 7, 9))) == 4
    assert cue_bits_of(CueRewardEnv(cue_bits=6).observation_space.shape[0]) == 6
    with pytest.raises(ValueError, match="at least 6"):
        cue_bits_of(5)
    # 3 cue bits + Go, reward, action one-hot (2), t/T: a cue, a blank step, a Go step with reward
    obs = np.array(
        [
            [1, -1, 1, 0, 0, 0, 0, 0.1],
            [0, 0, 0, 0, 0, 1, 0, 0.2],
            [0, 0, 0, 1, 1, 0, 1, 0.3],
        ],
        dtype=np.float32,
    )
    assert cue_visible(obs).tolist() == [True, False, False]
    assert cue_visible(obs[0]) and cue_visible(obs, cue_bits=3).tolist() == [True, False, False]


def test_info_helpers_by_hand():
    from bpm_envs.cue_reward import answers_from_infos, cue_shown, go_steps, is_cue_info, target_cue

    # one trial of 6 steps (blank, cue 2, blank, cue 0, Go, blank) then the first step of the next
    # (blank, pair (1, 3)); 4 cue bits: cue k shows bit k set to +1 and the others -1
    pairs = [(2, 0)] * 6 + [(1, 3)]
    stim = [-1, 2, -1, 0, -1, -1, -1]
    infos = [
        {
            "target": 3,
            "pair": np.array(p),
            "target_in_pair": 3 in p,
            "trial": 0 if t < 6 else 1,
            "go": t == 4,
            "trial_start": t in (0, 6),
            # grades the action taken before this info: the Go step's (t = 4) answer was wrong
            "answer_correct": np.int8(0 if t == 5 else -1),
        }
        for t, p in enumerate(pairs)
    ]
    obs = np.zeros((7, 4 + 5), dtype=np.float32)
    for t, s in enumerate(stim):
        if s >= 0:
            obs[t, :4] = -1
            obs[t, s] = 1
    obs[4, 4] = 1  # Go bit
    assert is_cue_info(infos[0]) and not is_cue_info({"agent_pos": (1, 1), "hits": 0, "hit": False})
    assert target_cue(infos[3]) == 3
    assert go_steps(infos).tolist() == [False, False, False, False, True, False, False]
    assert cue_shown(obs, infos).tolist() == stim
    assert cue_shown(obs, infos, cue_bits=4).tolist() == stim
    trial, graded = answers_from_infos(infos)
    assert trial.tolist() == [[0, 0, 0, 0, 0, 0]]  # the action at step t belongs to infos[t]
    assert graded.tolist() == [[-1, -1, -1, -1, 0, -1]]  # its grade comes with infos[t + 1]
    with pytest.raises(ValueError, match="at least one step"):
        answers_from_infos(infos[:1])


def test_info_helpers_read_a_real_episode():
    from bpm_envs.cue_reward import answers_from_infos, cue_shown, go_steps, is_cue_info, target_cue

    T = 30
    env = gym.make("bpm/CueReward-v0", episode_length=T)
    obs, info = env.reset(seed=9)
    assert is_cue_info(info)
    task = env.unwrapped.task
    observations, infos, truth, actions = [obs], [info], [], []
    for t in range(T):
        stim = int(task.stim[0, t])
        truth.append(-1 if stim == task.n_cues else stim)
        actions.append(t % 2)
        obs, _, _, _, info = env.step(actions[-1])
        observations.append(obs)
        infos.append(info)
    shown = cue_shown(np.array(observations[:T]), infos[:T])
    assert shown.tolist() == truth
    assert (shown >= 0).sum() >= 6  # 30 steps hold at least 3 whole trials of 2 cues each
    assert target_cue(infos[0]) == int(task.target[0])
    go = go_steps(infos[:T])
    assert go.tolist() == task.go[0, :T].tolist()
    trial, graded = answers_from_infos(infos)
    assert trial.tolist() == [task.trial[0, :T].tolist()]
    right = np.where(task.target_in_pair[0, :T], 1, 0) == np.array(actions)
    assert graded.tolist() == [np.where(go, right.astype(int), -1).tolist()]


def test_reference_levels_oracle_scores_every_trial_and_random_answers_score_zero():
    from bpm_envs.cue_levels import levels, play

    n = 400
    venv = gym.make_vec("bpm/CueReward-v0", num_envs=n)
    _, info = venv.reset(seed=3)
    go_steps = np.zeros(n)
    truncated = np.zeros(n, dtype=bool)
    while not truncated.all():  # the same episodes (seed 3): count the steps that are answered
        go_steps += info["go"]
        _, _, _, truncated, info = venv.step(np.zeros(n, dtype=np.int64))
    venv.close()
    np.testing.assert_array_equal(play("oracle", n, seed=3), go_steps)  # +1 on every Go step
    assert 15 <= go_steps.mean() <= 22  # 120 steps of 5-8 step trials
    random = play("random", n, seed=3)
    assert np.all(np.abs(random) <= go_steps) and np.all((random - go_steps) % 2 == 0)  # +-1 per Go
    from bpm_agents.experiments.definitions import BUILTIN, CUE_LEVELS

    lv = levels(2000, seed=0)  # measured afresh, they agree with the levels the reports draw
    assert abs(lv["random"]["mean"] - CUE_LEVELS["chance"]) < 4 * lv["random"]["stderr"]
    assert abs(lv["oracle"]["mean"] - CUE_LEVELS["oracle"]) < 4 * lv["oracle"]["stderr"]
    assert BUILTIN["fig1"].levels == BUILTIN["a5"].levels == CUE_LEVELS
    with pytest.raises(ValueError, match="policy must be one of random, oracle, got 'best'"):
        play("best", 1)
