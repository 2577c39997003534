"""Stable-Baselines3 interop: the vec-env adapter against SB3's DummyVecEnv, SB3's evaluate_policy
on our plastic policy, and the SB3 run folders (train, resume, load, errors, Ctrl-C)."""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

import bpm_envs  # noqa: F401  (registers the ids)
from bpm_agents.a2c import A2CConfig, A2CTrainer
from bpm_agents.checkpoint import CheckpointError, load_checkpoint
from bpm_agents.sb3 import (
    CHECKPOINT_FILE,
    NativeVecEnv,
    SB3Config,
    _RolloutStats,
    build_model,
    load_agent,
    load_model,
    make_sb3_vec_env,
    train_main,
)

CUE = "bpm/CueReward-v0"
MAZE = "bpm/PlasticMaze-v0"


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------- adapter
@pytest.mark.parametrize("env_id, kwargs", [(CUE, {"episode_length": 7}), (MAZE, {"episode_length": 6})])
def test_native_vec_env_equals_dummy_vec_env_step_for_step(env_id, kwargs):
    """Same seeds -> the same observations, rewards, dones and terminal observations, across resets."""
    n = 3
    native = NativeVecEnv(env_id, n, kwargs)
    dummy = DummyVecEnv([lambda: gym.make(env_id, **kwargs)] * n)
    native.seed(11)
    dummy.seed(11)
    np.testing.assert_array_equal(native.reset(), dummy.reset())
    rng = np.random.default_rng(0)
    n_actions = native.action_space.n
    done_steps = []
    for t in range(2 * kwargs["episode_length"] + 3):
        actions = rng.integers(0, n_actions, size=n)
        o1, r1, d1, i1 = native.step(actions)
        o2, r2, d2, i2 = dummy.step(actions)
        np.testing.assert_array_equal(o1, o2)
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(d1, d2)
        if d1.any():
            done_steps.append(t)
            for a, b in zip(i1, i2):
                np.testing.assert_array_equal(a["terminal_observation"], b["terminal_observation"])
                assert a["TimeLimit.truncated"] is True and b["TimeLimit.truncated"] is True
    length = kwargs["episode_length"]
    assert done_steps == [length - 1, 2 * length - 1]


def test_native_vec_env_reward_sums_match_vec_monitor():
    venv = make_sb3_vec_env(CUE, 4, seed=3, env_kwargs={"episode_length": 12})
    venv.reset()
    rng = np.random.default_rng(1)
    total = np.zeros(4)
    for _ in range(12):
        _, r, done, infos = venv.step(rng.integers(0, 2, size=4))
        total += r
    assert done.all()
    np.testing.assert_allclose([i["episode"]["r"] for i in infos], total, atol=1e-6)
    assert [i["episode"]["l"] for i in infos] == [12] * 4


def test_native_vec_env_rejects_unknown_id():
    with pytest.raises(ValueError, match="unknown env id 'bpm/Nope-v0'"):
        NativeVecEnv("bpm/Nope-v0", 2)


# ---------------------------------------------------------------------------- evaluate_policy on ours
def reference_episodes(policy, env_id, kwargs, n_envs, rounds, seed, reset_state=True):
    """Deterministic episodes of ``policy`` on the native env, run by hand.

    Returns rewards (rounds * n,), actions (n, rounds * T) and hidden states (rounds * T, n, N).
    """
    envs = gym.make_vec(env_id, num_envs=n_envs, vectorization_mode="vector_entry_point", **kwargs)
    obs, _ = envs.reset(seed=seed)
    length = envs.unwrapped.task.episode_length
    rewards, actions, hiddens = [], [], []
    state = policy.initial_state(n_envs)
    for r in range(rounds):
        if r > 0:
            obs, _ = envs.reset()
            if reset_state:
                state = policy.initial_state(n_envs)
        total = np.zeros(n_envs)
        with torch.no_grad():
            for _ in range(length):
                out = policy.step(torch.from_numpy(obs), state)
                state = out.state
                a = out.logits.argmax(-1).numpy()
                actions.append(a)
                hiddens.append(state.hidden.numpy())
                obs, rew, _, _, _ = envs.step(a)
                total += rew
        rewards.extend(total.tolist())
    return np.asarray(rewards), np.stack(actions, axis=1), np.stack(hiddens)


class StateRecorder:
    """Passes ``predict`` through to the policy and keeps the hidden state it returns."""

    def __init__(self, policy):
        self.policy, self.hiddens = policy, []

    def predict(self, observation, state=None, episode_start=None, deterministic=False):
        actions, state = self.policy.predict(observation, state, episode_start, deterministic)
        self.hiddens.append(state[0])
        return actions, state


def test_evaluate_policy_runs_our_plastic_policy_with_its_state():
    """SB3's evaluate_policy threads our predict state and episode_start like our own rollout."""
    kwargs = {"episode_length": 25}
    trainer = A2CTrainer(
        A2CConfig(env_id=CUE, rule="retroactive", hidden_size=16, batch_size=4, env_kwargs=kwargs, seed=0)
    )
    trainer.update()
    trainer.update()
    policy = trainer.policy.eval()
    n, seed = 3, 7

    def make_venv():
        venv = DummyVecEnv([lambda: Monitor(gym.make(CUE, **kwargs))] * n)
        venv.seed(seed)
        return venv

    seen = []
    rewards, lengths = evaluate_policy(
        policy,
        make_venv(),
        n_eval_episodes=2 * n,
        deterministic=True,
        return_episode_rewards=True,
        # the callback runs once per env and step; the actions of a step are shared
        callback=lambda loc, glob: seen.append(np.array(loc["actions"])) if loc["i"] == 0 else None,
    )
    assert lengths == [25] * (2 * n)
    ref_rewards, ref_actions, ref_hiddens = reference_episodes(policy, CUE, kwargs, n, 2, seed)
    # evaluate_policy lists episodes as they end: all envs end together, env order within a round
    np.testing.assert_array_equal(rewards, ref_rewards)
    np.testing.assert_array_equal(np.stack(seen, axis=1), ref_actions)

    recorder = StateRecorder(policy)
    evaluate_policy(recorder, make_venv(), n_eval_episodes=2 * n, deterministic=True)
    np.testing.assert_allclose(np.stack(recorder.hiddens), ref_hiddens, atol=1e-6)
    # that comparison can fail: carrying the state into the second episode changes it
    _, _, leaky = reference_episodes(policy, CUE, kwargs, n, 2, seed, reset_state=False)
    assert np.abs(leaky[25] - ref_hiddens[25]).max() > 1e-3


# ---------------------------------------------------------------------------- run folders
SMALL = [
    "--env-kwargs",
    '{"episode_length": 20}',
    "--n-envs",
    "2",
    "--n-steps",
    "20",
    "--no-progress",
    "--no-tensorboard",
]


def test_ppo_run_folder_trains_resumes_and_loads(tmp_path):
    out = tmp_path / "ppo"
    args = [
        "--algo",
        "ppo",
        "--out",
        str(out),
        "--minibatch-size",
        "20",
        "--n-epochs",
        "1",
        "--net-arch",
        "16",
        "--seed",
        "3",
        *SMALL,
    ]
    assert train_main([*args, "--updates", "2"]) == 0
    meta = json.loads((out / "config.json").read_text())
    assert meta["algo"] == "ppo"
    assert meta["config"]["n_steps"] == 20 and meta["config"]["net_arch"] == [16]
    assert meta["config"]["env_kwargs"] == {"episode_length": 20}
    rows = read_rows(out / "progress.csv")
    assert [int(r["update"]) for r in rows] == [1, 2]
    assert [int(r["env_steps"]) for r in rows] == [40, 80]
    # n_steps == episode length: every update finishes one episode per env
    assert [int(r["episodes"]) for r in rows] == [2, 4]
    assert load_checkpoint(out / CHECKPOINT_FILE)["num_timesteps"] == 80

    assert (
        train_main(["--out", str(out), "--resume", "--updates", "3", "--no-progress", "--no-tensorboard"])
        == 0
    )
    rows = read_rows(out / "progress.csv")
    assert [int(r["update"]) for r in rows] == [1, 2, 3]
    assert [int(r["env_steps"]) for r in rows] == [40, 80, 120]
    assert float(rows[2]["wall_time"]) >= float(rows[1]["wall_time"])

    agent = load_agent(out)
    assert (agent.algo, agent.env_id, agent.env_kwargs) == ("ppo", CUE, {"episode_length": 20})
    assert agent.model.num_timesteps == 120
    # the loaded weights are the checkpoint's, not a fresh initialisation
    saved = load_checkpoint(out / CHECKPOINT_FILE)["parameters"]["policy"]
    for name, value in agent.model.policy.state_dict().items():
        torch.testing.assert_close(value, saved[name])
    fresh = build_model(agent.config, make_sb3_vec_env(CUE, 1, 0, {"episode_length": 20}))
    assert any(not torch.equal(v, saved[k]) for k, v in fresh.policy.state_dict().items())
    obs = np.zeros((5, agent.model.observation_space.shape[0]), dtype=np.float32)
    actions, state = agent.predict(obs, deterministic=True)
    assert actions.shape == (5,) and state is None


def test_rollout_stats_match_sb3_episode_monitor():
    """The per-update episode returns we log are the ones SB3's VecMonitor reports."""
    cfg = SB3Config(
        algo="a2c", env_kwargs={"episode_length": 10}, n_envs=3, n_steps=4, net_arch=[8], seed=1
    ).resolve()
    venv = make_sb3_vec_env(CUE, 3, 1, cfg.env_kwargs)
    model = build_model(cfg, venv)
    stats = _RolloutStats(3)
    returns = []
    for _ in range(8):  # 32 steps per env: 3 episodes each end inside different updates
        model.learn(cfg.steps_per_update, callback=stats, log_interval=None, reset_num_timesteps=False)
        returns.extend(stats.pop_returns().tolist())
    monitored = [ep["r"] for ep in model.ep_info_buffer]
    assert len(returns) == 9
    np.testing.assert_allclose(returns, monitored, atol=1e-5)


def test_recurrent_ppo_agent_threads_lstm_state(tmp_path):
    out = tmp_path / "rppo"
    assert (
        train_main(
            [
                "--algo",
                "recurrent-ppo",
                "--out",
                str(out),
                "--updates",
                "1",
                "--lstm-hidden-size",
                "8",
                "--net-arch",
                "8",
                "--minibatch-size",
                "40",
                "--n-epochs",
                "1",
                *SMALL,
            ]
        )
        == 0
    )
    agent = load_agent(out)
    assert agent.recurrent
    lstm = agent.model.policy.lstm_actor
    rng = np.random.default_rng(0)
    obs_seq = rng.choice([-1.0, 0.0, 1.0], size=(6, 2, 25)).astype(np.float32)  # (T, B, D)
    state, starts = None, np.ones(2, dtype=bool)
    for obs in obs_seq:
        _, state = agent.predict(obs, state=state, episode_start=starts, deterministic=True)
        starts = np.zeros(2, dtype=bool)
    h, c = state
    assert h.shape == (1, 2, 8) and c.shape == (1, 2, 8)
    # the threaded state is the LSTM run over the whole sequence from zero
    with torch.no_grad():
        _, (h_ref, c_ref) = lstm(torch.from_numpy(obs_seq))
    np.testing.assert_allclose(h, h_ref.numpy(), atol=1e-5)
    np.testing.assert_allclose(c, c_ref.numpy(), atol=1e-5)
    # episode_start zeroes the state: same result as starting from None
    a1, s1 = agent.predict(obs_seq[0], state=state, episode_start=np.ones(2, dtype=bool), deterministic=True)
    a0, s0 = agent.predict(obs_seq[0], state=None, episode_start=np.ones(2, dtype=bool), deterministic=True)
    np.testing.assert_array_equal(a1, a0)
    np.testing.assert_allclose(s1[0], s0[0], atol=1e-6)
    assert not np.allclose(state[0], s0[0])
    # and SB3's own evaluation loop accepts the agent
    venv = make_sb3_vec_env(CUE, 2, 5, {"episode_length": 20})
    rewards, lengths = evaluate_policy(agent, venv, n_eval_episodes=2, return_episode_rewards=True)
    assert lengths == [20, 20] and all(abs(r) <= 20 for r in rewards)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--algo", "ppo", "--env", "bpm/Nope-v0"], "unknown env id 'bpm/Nope-v0'"),
        (["--algo", "ppo", "--plasticity", "simple"], "--plasticity: only for --algo plastic-a2c"),
        (["--algo", "a2c", "--n-epochs", "3"], "n_epochs does not apply to algo 'a2c'"),
        (["--algo", "ppo", "--env-kwargs", "[1]"], "--env-kwargs must be a JSON object"),
        (["--algo", "ppo", "--env-kwargs", '{"n_cues": 1}'], "n_cues must be an integer >= 3"),
        (["--algo", "ppo", "--net-arch", "64,x"], "--net-arch must be comma-separated integers"),
        (["--algo", "ppo", "--n-envs", "0"], "n_envs must be an integer >= 1, got 0"),
        (["--algo", "ppo", "--threads", "0"], "--threads must be >= 1, got 0"),
        (["--resume"], "does not exist"),
        ([], "--algo is required"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    assert train_main([*argv, "--out", str(out), "--updates", "1", "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "config.json").exists()


def test_existing_run_folder_and_foreign_algo_are_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"algo": "plastic-a2c", "config": {}}))
    assert train_main(["--algo", "ppo", "--out", str(out), "--updates", "1", "--no-progress"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert train_main(["--resume", "--out", str(out), "--updates", "1", "--no-progress"]) == 2
    assert "trained with 'plastic-a2c', not an SB3 algorithm" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="not an SB3 algorithm"):
        load_model(out)


def test_a_legacy_sb3_zip_folder_still_loads_and_resumes(tmp_path):
    """Folders of earlier versions: config.json without a schema and an SB3 checkpoint.zip."""
    out = tmp_path / "run"
    assert train_main(["--algo", "a2c", "--out", str(out), "--updates", "2", *SMALL]) == 0
    _, model = load_model(out)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    meta = json.loads((out / "config.json").read_text())
    (legacy / "config.json").write_text(json.dumps({"algo": meta["algo"], "config": meta["config"]}))
    model.save(legacy / "checkpoint.zip")
    (legacy / "progress.csv").write_text((out / "progress.csv").read_text())
    agent = load_agent(legacy)
    assert agent.model.num_timesteps == 80
    for name, value in agent.model.policy.state_dict().items():
        torch.testing.assert_close(value, model.policy.state_dict()[name])
    # no resume state in a plain SB3 zip: it continues, freshly seeded, into the new format
    assert (
        train_main(["--out", str(legacy), "--resume", "--updates", "3", "--no-progress", "--no-tensorboard"])
        == 0
    )
    assert load_checkpoint(legacy / CHECKPOINT_FILE)["num_timesteps"] == 120
    assert [r["update"] for r in read_rows(legacy / "progress.csv")] == ["1", "2", "3"]


def test_corrupted_checkpoint_is_a_clear_error(tmp_path):
    out = tmp_path / "run"
    assert train_main(["--algo", "a2c", "--out", str(out), "--updates", "0", *SMALL]) == 0
    (out / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_agent(out)


def test_ctrl_c_saves_and_exits_130(tmp_path, capsys):
    """SIGINT (as Ctrl-C sends) stops after the current update, saves, and exits 130."""
    out = tmp_path / "run"
    progress = out / "progress.csv"

    def interrupt_after_two_updates():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if progress.exists() and len(read_rows(progress)) >= 2:
                os.kill(os.getpid(), signal.SIGINT)  # handled in the main thread
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=interrupt_after_two_updates, daemon=True)
    watcher.start()
    code = train_main(
        ["--algo", "a2c", "--out", str(out), "--updates", "100000", "--checkpoint-every", "100000", *SMALL]
    )
    watcher.join()
    assert code == 130
    assert "interrupted, checkpoint saved" in capsys.readouterr().out
    done = int(read_rows(progress)[-1]["update"])
    assert 2 <= done < 100000
    assert load_checkpoint(out / CHECKPOINT_FILE)["num_timesteps"] == done * 40


def test_config_resolve_fills_algorithm_defaults():
    ppo = SB3Config(algo="ppo").resolve()
    assert (ppo.n_steps, ppo.minibatch_size, ppo.n_epochs, ppo.learning_rate) == (128, 64, 10, 3e-4)
    assert ppo.steps_per_update == 8 * 128
    a2c = SB3Config(algo="a2c", n_envs=4).resolve()
    assert (a2c.n_steps, a2c.learning_rate, a2c.steps_per_update) == (5, 7e-4, 20)
    with pytest.raises(ValueError, match="unknown algo 'dqn'"):
        SB3Config(algo="dqn").resolve()
