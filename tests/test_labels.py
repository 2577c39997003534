"""Readable frames (issue 13): the cue task's labelled rgb_array frame and the GIF captions."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bpm_agents import evaluation as ev
from bpm_envs import CueRewardEnv
from bpm_envs import rendering as R

HEADER, LABEL, CELL = 40, 104, 24


def step_to(env, predicate, max_steps=60):
    for t in range(max_steps):
        _, reward, _, _, info = env.step(1)
        if predicate(info):
            return reward, info
    raise AssertionError("never happened")


def test_cue_frame_is_big_and_labelled():
    env = CueRewardEnv(render_mode="rgb_array", episode_length=40)
    env.reset(seed=2)
    frame = env.render()
    assert frame.shape == (122, LABEL + 24 * CELL, 3)  # was 38 x 384 without labels
    task = env.unwrapped.task
    assert task.status_lines(0) == ("trial 1   step 0/40   reward so far +0", "blank", "no action yet")
    # the header's text is in the frame exactly where it is drawn
    text = R.text_image("trial 1   step 0/40   reward so far +0", 22)
    np.testing.assert_array_equal(frame[4 : 4 + text.shape[0], 6 : 6 + text.shape[1]], text)

    # the Go step: its label says so on yellow, and the Go cell is yellow
    _, info = step_to(env, lambda i: bool(i["go"]))
    frame = env.render()
    shown = task.status_lines(0)[1]
    assert shown == "Go: answer now"
    go = R.text_image("Go: answer now", 22, R.COLORS["wall"], R.COLORS["flash"])
    np.testing.assert_array_equal(frame[HEADER + 5 : HEADER + 5 + go.shape[0], 6 : 6 + go.shape[1]], go)
    go_cell = frame[HEADER + CELL // 2, LABEL + 21 * CELL + CELL // 2]
    assert tuple(go_cell) == R.COLORS["flash"]

    # the answer (action 1) right after it: right or wrong, its reward, the total
    right = bool(info["target_in_pair"])
    reward, _ = step_to(env, lambda i: True)
    header, _, result = task.status_lines(0)
    assert result == f"answer 1 (target in pair): {'right' if right else 'wrong'}, reward {reward:+g}"
    assert reward == (1.0 if right else -1.0)
    assert header.endswith(f"reward so far {reward:+g}")
    colour = R.COLORS["positive" if right else "negative"]
    line = R.text_image(result, 22, colour, R.COLORS["free"])
    frame = env.render()
    y = HEADER + 2 * CELL + 5
    np.testing.assert_array_equal(frame[y : y + line.shape[0], 6 : 6 + line.shape[1]], line)
    # the target's cue id labels the second row
    assert int(info["target"]) == int(task.target[0])


def test_return_so_far_sums_the_episode_and_restarts():
    env = CueRewardEnv(episode_length=30)
    env.reset(seed=5)
    total = 0.0
    for t in range(30):
        _, r, *_ = env.step(t % 2)
        total += r
        assert env.unwrapped.task.return_so_far[0] == total
    env.reset(seed=6)
    assert env.unwrapped.task.return_so_far[0] == 0.0


class Always:
    """Always takes ``action`` (the acting contract of bpm_agents.evaluation)."""

    def __init__(self, env_id, action, env_kwargs):
        self.env_id, self.env_kwargs, self.action, self.recurrent = env_id, env_kwargs, action, False

    def predict(self, observation, state=None, episode_start=None, deterministic=False):
        return np.full(len(observation), self.action), None


@pytest.mark.parametrize("env_id", ["bpm/PlasticMaze-v0", "bpm/CueReward-v0"])
def test_gif_frames_carry_a_step_and_reward_caption(tmp_path, env_id):
    agent = Always(env_id, 1, {"episode_length": 12})
    path, totals = ev.record_gif(agent, tmp_path / "x.gif", episodes=2, seed=4)
    trace = ev.run_episode(
        agent, seed=5, env_id=env_id, env_kwargs={"episode_length": 12}, render_mode="rgb_array"
    )
    assert totals[1] == trace.total_reward
    with Image.open(path) as im:
        assert im.n_frames == 2 * 13
        im.seek(13 + 12)  # episode 2, its last frame
        last = np.asarray(im.convert("RGB"))
    width = trace.frames[-1].shape[1]
    want = R.caption_strip(width, f"episode 2/2   step 12/12   reward so far {trace.total_reward:+g}")
    np.testing.assert_array_equal(last[-18:], want)
    np.testing.assert_array_equal(last[:-18], trace.frames[-1])


def test_missing_pygame_names_the_render_extra(monkeypatch):
    import sys

    monkeypatch.setattr(R, "_FONTS", {})
    monkeypatch.setitem(sys.modules, "pygame", None)  # import pygame -> ModuleNotFoundError
    with pytest.raises(ImportError, match=r"the 'render' extra: pip install 'backpropamine-gym\[render\]'"):
        R.text_image("x")
