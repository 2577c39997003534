"""Evaluation library: statistics by hand, cue answers by trial, seeding, loading, GIF, Fig. 3."""

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import importlib.util
import json
import math
import shutil
import subprocess
import sys
import types
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from PIL import Image

from bpm_agents import evaluation as ev
from bpm_agents.a2c import A2CConfig
from bpm_agents.checkpoint import CheckpointError, load_checkpoint
from bpm_agents.training import train

CUE = "bpm/CueReward-v0"
MAZE = "bpm/PlasticMaze-v0"
T = 30
ROOT = Path(__file__).resolve().parents[1]


def tiny_config(env_id: str, rule: str) -> A2CConfig:
    return A2CConfig(
        env_id=env_id,
        rule=rule,
        hidden_size=8,
        batch_size=4,
        env_kwargs={"episode_length": T},
        unroll_impl="reference",
    ).resolve()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    out = {}
    for name, env_id, rule in [("cue", CUE, "retroactive"), ("maze", MAZE, "hebbian")]:
        train(tiny_config(env_id, rule), base / name, updates=2, progress=False, tensorboard=False)
        out[name] = base / name
    return out


def load_cli():
    spec = importlib.util.spec_from_file_location("evaluate_cli", ROOT / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ConstantAgent:
    """SB3-style test double: always the same action; records the episode_start it is given and
    checks that the state it returned comes back at the next call (a step counter here)."""

    algo = "constant"

    def __init__(self, env_id, action, env_kwargs=None):
        self.env_id, self.env_kwargs, self.action = env_id, env_kwargs or {"episode_length": T}, action
        self.starts = []
        self.returned = None

    def predict(self, observation, state=None, episode_start=None, deterministic=False):
        starts = np.asarray(episode_start)
        self.starts.append(starts.copy())
        if state is None:
            assert starts.all()  # a fresh state only where every episode starts
        else:
            assert state is self.returned
        self.returned = (0 if state is None else state[0] + 1, len(observation))
        return np.full(len(observation), self.action), self.returned


class GlobalRngAgent(ConstantAgent):
    """Samples its answers from torch's global generator, as SB3 policies do."""

    def predict(self, observation, state=None, episode_start=None, deterministic=False):
        return (torch.rand(len(observation)) < 0.5).long().numpy(), state


# ------------------------------------------------------------------------ statistics by hand
def test_mean_ci95_by_hand():
    mean, half = ev.mean_ci95([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0
    # sample std = sqrt(10 / 4); half = 1.96 * std / sqrt(5)
    assert half == pytest.approx(1.96 * math.sqrt(2.5) / math.sqrt(5))  # 1.3859...
    assert half == pytest.approx(1.385929291125633)
    assert math.isnan(ev.mean_ci95([7.0])[1]) and ev.mean_ci95([7.0])[0] == 7.0
    with pytest.raises(ValueError, match="at least one"):
        ev.mean_ci95([])


def test_correct_by_trial_from_hand_made_infos():
    # Two envs, 6 steps. infos[0] is the reset info, infos[t+1] the info after step t.
    # "trial" is that of the step shown next; "answer_correct" grades the action just taken.
    trial_shown = [[0, 0], [0, 0], [1, 1], [1, 1], [1, 1], [2, 1], [2, 2]]
    graded = [[-1, -1], [-1, -1], [1, -1], [-1, 0], [-1, -1], [0, -1], [-1, 1]]
    infos = [
        {"trial": np.array(t), "answer_correct": np.array(g, np.int8)} for t, g in zip(trial_shown, graded)
    ]
    trial, grade = ev.answers_from_infos(infos)
    assert trial.shape == grade.shape == (2, 6)
    acc = ev.correct_by_trial(trial, grade)
    # env 0: answer at step 1 (trial 0) right, at step 4 (trial 1) wrong;
    # env 1: answer at step 2 (trial 1) wrong, at step 5 (trial 1) right.
    # Steps 1 (env 0) and 5 (env 1) end their trial: the info after them already shows the next
    # trial, so pairing a grade with its own info would give [0, 3, 1] answers instead.
    assert acc.answers.tolist() == [1, 3]
    assert acc.correct.tolist() == [1, 1]
    assert acc.fraction.tolist() == [1.0, pytest.approx(1 / 3)]
    assert acc.overall == pytest.approx(2 / 4)
    assert acc.rows()[1] == {"trial": 1, "answers": 3, "correct": 1, "fraction": pytest.approx(1 / 3)}
    # single-env infos hold scalars
    single = [{"trial": 0, "answer_correct": -1}, {"trial": 1, "answer_correct": 0}]
    acc1 = ev.correct_by_trial(*ev.answers_from_infos(single))
    assert acc1.answers.tolist() == [1] and acc1.correct.tolist() == [0]


def test_correct_by_trial_leaves_trials_without_answers_nan():
    acc = ev.correct_by_trial(np.array([[0, 2, 2]]), np.array([[1, -1, 0]]))
    assert acc.answers.tolist() == [1, 0, 1]
    assert acc.fraction[0] == 1.0 and math.isnan(acc.fraction[1]) and acc.fraction[2] == 0.0
    assert acc.rows()[1]["fraction"] is None


# ------------------------------------------------------------------------ evaluate() with doubles
def reference_cue_answers(episodes, seed, action):
    """Go answers and right ones per episode, read directly from single envs (episode j: seed+j)."""
    answers, right = [], []
    for j in range(episodes):
        env = gym.make(CUE, episode_length=T)
        _, info = env.reset(seed=seed + j)
        n = r = 0
        for _ in range(T):
            if info["go"]:
                n += 1
                r += int(bool(info["target_in_pair"]) == bool(action))
            _, _, _, _, info = env.step(action)
        answers.append(n)
        right.append(r)
    return np.array(answers), np.array(right)


def test_evaluate_constant_answer_on_cue_matches_the_env():
    agent = ConstantAgent(CUE, action=1)
    result = ev.evaluate(agent, episodes=7, seed=11, batch_size=3)
    answers, right = reference_cue_answers(7, 11, action=1)
    # reward +1 per right answer, -1 per wrong one
    assert result.episode_rewards.tolist() == (2 * right - answers).tolist()
    assert result.episodes == 7 and result.episode_length == T
    assert result.mean_reward == pytest.approx(np.mean(2 * right - answers))
    assert result.ci95 == pytest.approx(1.96 * np.std(2 * right - answers, ddof=1) / math.sqrt(7))
    acc = result.trial_accuracy
    assert acc.answers.sum() == answers.sum() and acc.correct.sum() == right.sum()
    # every episode answers in trials 0 and 1 (a trial lasts at most 8 steps)
    assert acc.answers[0] == 7 and acc.answers[1] == 7
    # episode_start: True at the first step of each batch (3 batches), False after
    starts = agent.starts
    assert len(starts) == 3 * T
    assert [s.all() for s in starts[::T]] == [True] * 3
    assert not any(s.any() for i, s in enumerate(starts) if i % T)
    d = result.to_dict()
    json.dumps(d)
    assert d["fraction_correct"] == pytest.approx(right.sum() / answers.sum())


def test_evaluate_episode_j_uses_seed_plus_j_whatever_the_batch():
    a = ev.evaluate(ConstantAgent(MAZE, action=3), episodes=5, seed=4, batch_size=2)
    b = ev.evaluate(ConstantAgent(MAZE, action=3), episodes=5, seed=4, batch_size=5)
    c = ev.evaluate(ConstantAgent(MAZE, action=3), episodes=1, seed=7)
    assert a.episode_rewards.tolist() == b.episode_rewards.tolist()
    assert c.episode_rewards[0] == a.episode_rewards[3]
    assert a.trial_accuracy is None


def test_evaluate_seeds_agents_that_sample_from_the_global_torch_rng():
    torch.manual_seed(123)
    outside = torch.rand(1)
    torch.manual_seed(123)
    r1 = ev.evaluate(GlobalRngAgent(CUE, 0), episodes=6, seed=2).episode_rewards
    r2 = ev.evaluate(GlobalRngAgent(CUE, 0), episodes=6, seed=2).episode_rewards
    assert r1.tolist() == r2.tolist()
    assert torch.rand(1).item() == outside.item()  # the caller's global RNG is left as it was


def test_evaluate_rejects_bad_arguments():
    agent = ConstantAgent(CUE, 0)
    with pytest.raises(ValueError, match="episodes"):
        ev.evaluate(agent, episodes=0)
    with pytest.raises(ValueError, match="unknown env id 'bpm/Nope-v0'"):
        ev.evaluate(agent, env_id="bpm/Nope-v0", episodes=1)


# ------------------------------------------------------------------------ real saved runs
def test_load_agent_restores_the_saved_weights(runs):
    agent = ev.load_agent(runs["cue"])
    assert isinstance(agent, ev.PlasticAgent)
    assert agent.env_id == CUE and agent.env_kwargs == {"episode_length": T}
    assert agent.updates_done == 2 and agent.modulated
    saved = load_checkpoint(runs["cue"] / "checkpoint.pt")["trainer"]["model"]
    for name, tensor in agent.policy.state_dict().items():
        assert torch.equal(tensor, saved[name]), name


def test_evaluate_plastic_agent_is_reproducible_and_batch_equals_single(runs):
    agent = ev.load_agent(runs["cue"])
    r1 = ev.evaluate(agent, episodes=6, seed=5, batch_size=4)
    r2 = ev.evaluate(agent, episodes=6, seed=5, batch_size=4)
    assert r1.episode_rewards.tolist() == r2.episode_rewards.tolist()
    assert np.isfinite(r1.mean_reward) and np.isfinite(r1.ci95)
    # greedy actions: episode j of a batch equals a single-env episode with seed + j
    greedy = ev.evaluate(agent, episodes=3, seed=5, deterministic=True)
    for j in range(3):
        trace = ev.run_episode(agent, seed=5 + j, deterministic=True)
        assert trace.total_reward == greedy.episode_rewards[j]
        assert len(trace.rewards) == T and trace.modulators.shape == (T,)


def test_plastic_predict_follows_the_sb3_contract(runs):
    agent = ev.load_agent(runs["cue"])
    env = gym.make_vec(CUE, num_envs=3, vectorization_mode="vector_entry_point", episode_length=T)
    obs, _ = env.reset(seed=0)
    state, mine = None, None
    for t in range(5):
        a, state = agent.predict(obs, state, np.array([t == 0] * 3), deterministic=True)
        b, mine, _ = agent.act(obs, mine, deterministic=True)
        assert a.tolist() == b.tolist()
        np.testing.assert_allclose(state[0], mine.hidden.numpy(), rtol=0, atol=0)
        obs, *_ = env.step(a)


def test_load_agent_errors(runs, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        ev.load_agent(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="not a run folder"):
        ev.load_agent(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(runs["cue"], bad)
    (bad / "checkpoint.pt").write_bytes(b"\x00garbage\xff" * 50)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        ev.load_agent(bad)
    other = tmp_path / "other"
    shutil.copytree(runs["cue"], other)
    meta = json.loads((other / "config.json").read_text())
    meta["config"]["env_id"] = MAZE
    (other / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="checkpoint is for env 'bpm/CueReward-v0'"):
        ev.load_agent(other)
    resized = tmp_path / "resized"
    shutil.copytree(runs["cue"], resized)
    meta = json.loads((resized / "config.json").read_text())
    meta["config"]["hidden_size"] = 9
    (resized / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not fit"):
        ev.load_agent(resized)


def test_cue_agent_cannot_be_evaluated_on_the_maze(runs):
    agent = ev.load_agent(runs["cue"])
    with pytest.raises(ValueError, match="observations of size 25"):
        ev.evaluate(agent, env_id=MAZE, env_kwargs={"episode_length": T}, episodes=1)


def test_non_plastic_a2c_runs_go_to_the_sb3_loader(runs, tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("bpm_agents.sb3")

    def load_agent(run_dir, device):
        calls.append((Path(run_dir), device))
        agent = ConstantAgent(CUE, 1)
        agent.algo = None  # the loader names it from config.json
        return agent

    fake.load_agent = load_agent
    monkeypatch.setitem(sys.modules, "bpm_agents.sb3", fake)
    (tmp_path / "config.json").write_text(json.dumps({"algo": "ppo", "config": {}}))
    agent = ev.load_agent(tmp_path)
    assert calls == [(tmp_path, torch.device("cpu"))]
    assert agent.algo == "ppo"
    assert ev.evaluate(agent, episodes=2).episodes == 2
    with pytest.raises(ev.NoModulatorError, match="no neuromodulator"):
        ev.plot_modulator(agent, tmp_path / "fig.png")


def test_recurrent_ppo_run_is_evaluated_with_its_lstm_state(tmp_path):
    from bpm_agents import sb3

    cfg = sb3.SB3Config(
        algo="recurrent-ppo",
        env_id=CUE,
        env_kwargs={"episode_length": T},
        n_envs=2,
        n_steps=16,
        minibatch_size=32,
        n_epochs=1,
        lstm_hidden_size=8,
        net_arch=[8],
    )
    sb3.train(cfg, tmp_path / "rppo", updates=1, progress=False, tensorboard=False)
    agent = ev.load_agent(tmp_path / "rppo")
    assert agent.algo == "recurrent-ppo" and agent.env_id == CUE
    result = ev.evaluate(agent, episodes=3, seed=2, deterministic=True, batch_size=2)
    # reference: one env at a time, the LSTM state threaded by hand
    for j in range(3):
        env = gym.make(CUE, episode_length=T)
        obs, _ = env.reset(seed=2 + j)
        state, total = None, 0.0
        for t in range(T):
            a, state = agent.model.predict(
                obs[None], state=state, episode_start=np.array([t == 0]), deterministic=True
            )
            obs, reward, *_ = env.step(int(a[0]))
            total += reward
        assert result.episode_rewards[j] == total
    assert result.trial_accuracy.answers.sum() > 0


# ------------------------------------------------------------------------ GIF, Fig. 3, window
def test_record_gif_holds_every_frame(runs, tmp_path):
    agent = ev.load_agent(runs["cue"])
    path, totals = ev.record_gif(agent, tmp_path / "cue.gif", episodes=2, seed=3)
    assert len(totals) == 2
    with Image.open(path) as im:
        # T + 1 frames per episode; the time bar makes every frame differ from the one before
        assert im.n_frames == 2 * (T + 1)


def test_plot_modulator_draws_cue_and_refuses_unmodulated(runs, tmp_path):
    agent = ev.load_agent(runs["cue"])
    path, trace = ev.plot_modulator(agent, tmp_path / "fig3.png", seed=1)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 500 and im.size[1] > 400
        pixels = np.asarray(im.convert("L"))
    assert pixels.std() > 5  # not a blank canvas
    assert trace.modulators.shape == (T,) and np.all(np.abs(trace.modulators) <= 1)  # tanh
    hebbian = ev.load_agent(runs["maze"])
    with pytest.raises(ev.NoModulatorError, match="rule 'hebbian'"):
        ev.plot_modulator(hebbian, tmp_path / "no.png")
    assert not (tmp_path / "no.png").exists()


def test_plot_modulator_leaves_the_matplotlib_backend_and_pyplot_alone(runs, tmp_path):
    import matplotlib

    before = matplotlib.get_backend()
    matplotlib.use("pdf")  # a backend other than the Agg the plot draws with
    try:
        import matplotlib.pyplot as plt

        mine = plt.figure()
        path, _ = ev.plot_modulator(ev.load_agent(runs["cue"]), tmp_path / "fig3.png", seed=2)
        assert matplotlib.get_backend() == "pdf"
        assert plt.get_fignums() == [mine.number] and plt.gcf() is mine
        with Image.open(path) as im:
            assert im.format == "PNG"
        plt.close(mine)
    finally:
        matplotlib.use(before)


def test_episode_stops_when_the_user_closes_the_window(runs):
    import pygame

    agent = ev.load_agent(runs["maze"])
    pygame.display.init()
    pygame.event.post(pygame.event.Event(pygame.QUIT))  # seen when reset draws the first frame
    trace = ev.run_episode(agent, seed=2, render_mode="human")
    assert trace.stopped_early and len(trace.actions) == 1
    assert not pygame.display.get_init()
    pygame.display.init()
    pygame.event.post(pygame.event.Event(pygame.QUIT))
    assert len(ev.render_episodes(agent, episodes=3, seed=2)) == 1  # no episode after the close
    # an env without the property (not a bpm env) never reports a closed window
    from bpm_agents.evaluation.envs import window_closed

    assert window_closed(gym.make("CartPole-v1")) is False


def test_render_human_maze_equals_the_recorded_episode(runs):
    agent = ev.load_agent(runs["maze"])
    shown = ev.render_episodes(agent, episodes=1, seed=2, deterministic=True)
    recorded = ev.run_episode(agent, seed=2, deterministic=True, render_mode="rgb_array")
    assert shown == [recorded.total_reward]
    assert len(recorded.frames) == T + 1


# ------------------------------------------------------------------------ CLI in-process
def test_cli_json_is_the_only_stdout(runs, capsys):
    cli = load_cli()
    assert cli.main([str(runs["maze"]), "--episodes", "5", "--json", "--seed", "4"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    assert data["episodes"] == 5 and len(data["episode_rewards"]) == 5
    assert data["algo"] == "plastic-a2c" and data["env_id"] == MAZE
    agent = ev.load_agent(runs["maze"])
    assert data["episode_rewards"] == ev.evaluate(agent, episodes=5, seed=4).episode_rewards.tolist()


def test_cli_plot_only_on_unmodulated_run_exits_2(runs, capsys, tmp_path):
    cli = load_cli()
    code = cli.main([str(runs["maze"]), "--episodes", "0", "--plot-modulator", str(tmp_path / "f.png")])
    err = capsys.readouterr().err
    assert code == 2 and "no neuromodulator" in err
    # with an evaluation asked too, the evaluation still runs and the note goes to stderr
    code = cli.main([str(runs["maze"]), "--episodes", "2", "--plot-modulator", str(tmp_path / "f.png")])
    captured = capsys.readouterr()
    assert code == 0 and "mean episode reward" in captured.out and "no neuromodulator" in captured.err


def test_cli_dispatches_lm(monkeypatch):
    seen = []
    fake = types.ModuleType("bpm_agents.lm.cli")
    fake.evaluate_main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "bpm_agents.lm.cli", fake)
    assert load_cli().main(["lm", "--checkpoint", "x.pt"]) == 0
    assert seen == [["--checkpoint", "x.pt"]]


# ------------------------------------------------------------------------ imports
def test_import_bpm_agents_lm_loads_neither_gymnasium_nor_the_envs():
    code = (
        "import sys, bpm_agents.lm, bpm_agents.lm.cli, bpm_agents.lm.trainer, bpm_agents.lm.stats; "
        "print('gymnasium' in sys.modules, 'bpm_envs' in sys.modules, 'bpm_agents.a2c' in sys.modules)"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["False", "False", "False"]


def test_bpm_agents_names_load_on_first_use():
    import bpm_agents
    from bpm_agents.a2c import A2CConfig
    from bpm_agents.training import train as train_fn

    assert bpm_agents.A2CConfig is A2CConfig and bpm_agents.train is train_fn
    assert set(bpm_agents.__all__) <= set(dir(bpm_agents))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bpm_agents.nope  # noqa: B018


def test_evaluation_package_reexports_every_public_name():
    import bpm_agents.evaluation as package
    from bpm_envs import cue_reward

    for name in package.__all__:
        assert getattr(package, name) is not None
    assert package.answers_from_infos is cue_reward.answers_from_infos
    assert package.cue_shown is cue_reward.cue_shown
