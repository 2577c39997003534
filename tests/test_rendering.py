"""Maze frames (rgb_array, ansi, human), the drawing helpers, GIF writing and the demo CLI."""

import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import pytest
from PIL import Image

import bpm_envs  # noqa: F401
from bpm_envs import demo
from bpm_envs.maze import BAR_PX, CELL_PX, FLASH_PX, PlasticMazeEnv, PlasticMazeVectorEnv
from bpm_envs.rendering import COLORS, HumanWindow, paint_cells, save_gif, timeline_bar

ENV_ID = "bpm/PlasticMaze-v0"


def cell_centre(frame, row, col):
    return tuple(int(v) for v in frame[row * CELL_PX + CELL_PX // 2, col * CELL_PX + CELL_PX // 2])


def step_until(env, predicate, seed=0, max_steps=2000):
    """Random steps (seeded) until ``predicate(info)``; returns the info."""
    rng = np.random.default_rng(seed)
    for _ in range(max_steps):
        *_, truncated, info = env.step(int(rng.integers(4)))
        if predicate(info):
            return info
        if truncated:
            env.reset()
    raise AssertionError("event never happened")


# ----------------------------------------------------------------------------- rgb_array
def test_rgb_frame_shape_and_colours_at_reset():
    env = gym.make(ENV_ID, render_mode="rgb_array")
    _, info = env.reset(seed=3)
    frame = env.render()
    assert isinstance(frame, np.ndarray) and frame.dtype == np.uint8
    assert frame.shape == (11 * CELL_PX + BAR_PX, 11 * CELL_PX, 3)
    assert cell_centre(frame, *info["agent_pos"]) == COLORS["agent"]
    assert cell_centre(frame, *info["reward_pos"]) == COLORS["reward"]
    assert cell_centre(frame, 0, 0) == COLORS["wall"]
    assert cell_centre(frame, 2, 2) == COLORS["wall"]  # a pillar
    assert cell_centre(frame, 1, 1) == COLORS["free"]
    # the reward colour appears in exactly one cell
    reward_px = np.all(frame == COLORS["reward"], axis=2).sum()
    assert reward_px == (CELL_PX - 1) ** 2  # one cell minus its 1-px grid lines
    # time bar empty at t = 0, no flash
    assert tuple(frame[-1, 0]) == COLORS["bar_bg"]
    assert tuple(frame[FLASH_PX // 2, FLASH_PX // 2]) != COLORS["flash"]


def test_rgb_frame_agent_trail_and_time_bar_after_steps():
    env = gym.make(ENV_ID, render_mode="rgb_array")
    env.reset(seed=3)
    info = step_until(env, lambda i: not i["hit"] and not i["bumped"], seed=1)
    prev = tuple(info["agent_pos"])
    info = step_until(env, lambda i: not i["hit"] and tuple(i["agent_pos"]) != prev, seed=2)
    frame = env.render()
    t = env.unwrapped.task.t[0]
    assert cell_centre(frame, *info["agent_pos"]) == COLORS["agent"]
    assert cell_centre(frame, *info["reward_pos"]) == COLORS["reward"]
    # the cell walked to one step earlier is tinted toward the trail colour, not plain free
    r, c = divmod(int(env.unwrapped.task.trail[0, 1]), 11)
    tint = np.array(cell_centre(frame, r, c))
    assert (r, c) != tuple(info["agent_pos"])
    assert tint[2] > tint[0] and tuple(tint) != COLORS["free"]
    # time bar filled to round(W * t / T) columns
    bar_row = frame[-1]
    filled = np.all(bar_row == COLORS["bar_fg"], axis=1).sum()
    assert filled == round(frame.shape[1] * t / 200)


def test_rgb_frame_flashes_on_a_reward_hit():
    env = gym.make(ENV_ID, render_mode="rgb_array")
    env.reset(seed=0)
    info = step_until(env, lambda i: bool(i["hit"]), seed=4)
    frame = env.render()
    assert cell_centre(frame, *info["reward_pos"]) == COLORS["flash"]
    assert cell_centre(frame, *info["agent_pos"]) == COLORS["agent"]  # disc at the landing cell
    ar, ac = info["agent_pos"]
    assert tuple(frame[ar * CELL_PX + 2, ac * CELL_PX + 2]) == COLORS["flash"]  # landing marked
    assert tuple(frame[FLASH_PX // 2, FLASH_PX // 2]) == COLORS["flash"]  # border flash
    # the hit is ticked on the time bar at the step it happened
    t_hit = int(env.unwrapped.task.t[0]) - 1
    col = int(np.floor(frame.shape[1] * (t_hit + 0.5) / 200))
    assert tuple(frame[-1, col]) == COLORS["flash"]
    # next step (no hit): the flash is gone, the reward cell is green again, the tick stays
    info = step_until(env, lambda i: not i["hit"], seed=5)
    frame = env.render()
    assert tuple(frame[FLASH_PX // 2, FLASH_PX // 2]) != COLORS["flash"]
    assert cell_centre(frame, *info["reward_pos"]) == COLORS["reward"]
    assert tuple(frame[-1, col]) == COLORS["flash"]


def test_vector_render_matches_single_envs():
    venv = gym.make_vec(ENV_ID, num_envs=3, render_mode="rgb_array")
    venv.reset(seed=8)
    actions = np.array([0, 3, 2])
    venv.step(actions)
    frames = venv.render()
    assert isinstance(frames, tuple) and len(frames) == 3
    for i in range(3):
        env = gym.make(ENV_ID, render_mode="rgb_array")
        env.reset(seed=8 + i)
        env.step(int(actions[i]))
        np.testing.assert_array_equal(frames[i], env.render())


# ----------------------------------------------------------------------------- ansi
def test_ansi_text_map_and_status_line():
    env = gym.make(ENV_ID, render_mode="ansi")
    _, info = env.reset(seed=5)
    text = env.render()
    assert isinstance(text, str)
    lines = text.rstrip("\n").split("\n")
    assert len(lines) == 12 and all(len(line) == 11 for line in lines[:11])
    grid = np.array([list(line) for line in lines[:11]])
    walls = env.unwrapped.task.walls
    np.testing.assert_array_equal(grid == "#", walls)
    assert grid[tuple(info["agent_pos"])] == "A" and (grid == "A").sum() == 1
    assert grid[tuple(info["reward_pos"])] == "R" and (grid == "R").sum() == 1
    assert (grid == ".").sum() == 65 - 2
    assert lines[11].startswith("t=0/200") and "hits=0" in lines[11]
    info = step_until(env, lambda i: bool(i["hit"]), seed=6)
    status = env.render().rstrip("\n").split("\n")[-1]
    assert "reward=+10" in status and f"hits={int(info['hits'])}" in status and "HIT" in status


# ----------------------------------------------------------------------------- human
def test_human_mode_draws_the_rgb_frame_into_a_pygame_window():
    import pygame

    env = gym.make(ENV_ID, render_mode="human")
    twin = gym.make(ENV_ID, render_mode="rgb_array")
    assert env.reset(seed=2) is not None
    twin.reset(seed=2)
    assert env.render() is None
    env.step(1)
    twin.step(1)
    shown = pygame.surfarray.array3d(pygame.display.get_surface()).transpose(1, 0, 2)
    np.testing.assert_array_equal(shown, twin.render())
    env.close()
    assert not pygame.display.get_init()


def test_human_window_respects_fps():
    window = HumanWindow("fps test", fps=20)
    frame = np.zeros((8, 8, 3), dtype=np.uint8)
    start = time.perf_counter()
    for _ in range(5):
        window.show(frame)
    elapsed = time.perf_counter() - start
    window.close()
    window.close()  # idempotent
    assert elapsed >= 4 / 20 - 0.03  # 4 waits of 50 ms between 5 frames


# ----------------------------------------------------------------------------- helpers
def test_paint_cells_hand_example():
    colors = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [9, 9, 9]]], dtype=np.uint8)
    frame = paint_cells(colors, 3)
    assert frame.shape == (6, 6, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame[:3, :3], np.broadcast_to([255, 0, 0], (3, 3, 3)))
    np.testing.assert_array_equal(frame[3:, 3:], np.broadcast_to([9, 9, 9], (3, 3, 3)))
    gridded = paint_cells(colors, 3, grid_px=1, grid_color=(1, 2, 3))
    assert tuple(gridded[3, 4]) == (1, 2, 3) and tuple(gridded[4, 4]) == (9, 9, 9)


def test_timeline_bar_fill_and_ticks():
    bar = timeline_bar(10, 2, t=3, total=5, ticks=[0], fg=(1, 1, 1), bg=(2, 2, 2), tick_color=(3, 3, 3))
    assert bar.shape == (2, 10, 3)
    np.testing.assert_array_equal(bar[0, :, 0], [1, 3, 1, 1, 1, 1, 2, 2, 2, 2])


@pytest.mark.parametrize(
    "call, pattern",
    [
        (lambda: paint_cells(np.zeros((2, 2, 3), np.float32), 4), r"uint8.*float32"),
        (lambda: paint_cells(np.zeros((2, 2, 3), np.uint8), 0), r"cell_px.*>= 1.*0"),
        (lambda: save_gif([], "x.gif"), r"at least one frame"),
        (lambda: save_gif([np.zeros((4, 4), np.uint8)], "x.gif"), r"\(H, W, 3\).*\(4, 4\)"),
        (lambda: HumanWindow("w", fps=0), r"fps.*> 0.*0"),
        (lambda: HumanWindow("w").show(np.zeros((4, 4, 4), np.uint8)), r"\(4, 4, 4\)"),
        (lambda: timeline_bar(10, 2, t=6, total=5), r"t=6"),
        (lambda: PlasticMazeEnv(render_mode="video"), r"video.*rgb_array"),
        (lambda: PlasticMazeVectorEnv(2, render_mode="human"), r"human.*vector"),
    ],
)
def test_helpers_reject_bad_input(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


# ----------------------------------------------------------------------------- GIF and demo
def test_save_gif_of_a_full_episode_has_one_frame_per_step(tmp_path):
    env = gym.make(ENV_ID, render_mode="rgb_array")
    env.reset(seed=0)
    frames = [env.render()]
    rng = np.random.default_rng(0)
    truncated = False
    while not truncated:
        *_, truncated, _ = env.step(int(rng.integers(4)))
        frames.append(env.render())
    path = save_gif(frames, tmp_path / "sub" / "maze.gif", fps=10)
    with Image.open(path) as gif:
        assert gif.n_frames == 201
        assert gif.size == (frames[0].shape[1], frames[0].shape[0])
        assert gif.info["duration"] == 100 and gif.info["loop"] == 0
        gif.seek(0)
        first = np.array(gif.convert("RGB"))
    info = env.unwrapped.task
    reward_rc = divmod(int(info.reward_cell[0]), 11)
    assert cell_centre(first, 5, 5) == COLORS["agent"]
    assert cell_centre(first, *reward_rc) == COLORS["reward"]


def test_demo_runs_an_episode_and_writes_a_gif(tmp_path, capsys):
    path = tmp_path / "demo.gif"
    totals = demo.main(["--episodes", "2", "--seed", "1", "--steps", "30", "--gif", str(path)])
    assert len(totals) == 2 and all(t % 10 == 0 for t in totals)
    out = capsys.readouterr().out
    assert "episode 0: 30 steps" in out and "saved 62 frames" in out
    with Image.open(path) as gif:
        assert gif.n_frames == 62
        gif.seek(61)
        last = np.asarray(gif.convert("RGB"))
    # each frame is captioned: episode, step, reward so far
    from bpm_envs.rendering import caption_strip

    caption = caption_strip(last.shape[1], f"episode 2/2   step 30/30   reward so far {totals[1]:+g}")
    np.testing.assert_array_equal(last[-18:], caption)
    # same seed, same totals
    assert demo.main(["--episodes", "2", "--seed", "1", "--steps", "30"]) == totals


def test_demo_human_window_and_help():
    totals = demo.main(["--render", "human", "--steps", "3"])
    assert len(totals) == 1
    result = subprocess.run(
        [sys.executable, "-m", "bpm_envs.demo", "--help"], capture_output=True, text=True, check=True
    )
    for flag in ("--env", "--episodes", "--seed", "--render", "--gif", "--steps"):
        assert flag in result.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "bpm_envs.demo", "--episodes", "0"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "expected an integer >= 1, got 0" in bad.stderr


def test_window_closed_is_false_until_the_user_closes_the_window():
    import pygame

    env = gym.make(ENV_ID, render_mode="human")
    assert env.unwrapped.window_closed is False  # no window yet
    env.reset(seed=3)  # draws the first frame: the window opens
    assert pygame.display.get_init() and env.unwrapped.window_closed is False
    env.step(0)
    assert env.unwrapped.window_closed is False
    pygame.event.post(pygame.event.Event(pygame.QUIT))  # the user clicks the close button
    env.step(0)  # the next frame sees the QUIT event
    assert env.unwrapped.window_closed is True and not pygame.display.get_init()
    env.step(0)  # later frames are not drawn: no window comes back
    assert env.unwrapped.window_closed is True and not pygame.display.get_init()
    env.close()
    assert env.unwrapped.window_closed is True  # stays True after close
    # closing the env by program is not the user closing the window; other modes never have one
    other = gym.make(ENV_ID, render_mode="human")
    other.reset(seed=3)
    other.close()
    assert other.unwrapped.window_closed is False
    for mode in (None, "rgb_array"):
        plain = gym.make(ENV_ID, render_mode=mode)
        plain.reset(seed=0)
        plain.step(0)
        assert plain.unwrapped.window_closed is False
    assert gym.make("bpm/CueReward-v0").unwrapped.window_closed is False
