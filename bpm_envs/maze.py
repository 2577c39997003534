"""The grid maze of the Backpropamine paper (``bpm/PlasticMaze-v0``), rules written once, batched.

Map: a ``size`` x ``size`` interior (default 9) inside a wall border, so an array of
``size + 2`` squares (11 x 11). Array cells whose row and column are both even are pillars
(16 for size 9); the centre ``(size + 1) // 2`` is always free (for sizes 7, 11, ... it would
otherwise be a pillar). Coordinates in ``info`` are (row, col) of this array.

Episode (``episode_length`` steps, default 200, never ends early):

- the agent starts at the centre; the reward cell is drawn uniformly among free cells other than
  the centre and stays fixed, invisible, for the episode;
- actions 0 up, 1 down, 2 left, 3 right; moving into a wall leaves the agent in place and gives
  ``wall_penalty`` (default 0);
- stepping onto the reward cell gives ``reward`` (default 10) and, on the same step, teleports
  the agent to a free cell other than the reward cell, drawn uniformly.

Observation (float32, 15 values for the default): the 3x3 wall patch around the agent after the
move (row-major, 1 = wall, 0 = free; index 4 is the agent's own cell, always 0), previous reward,
previous action one-hot (4, zeros at t=0), t/T.

``info`` (per env): ``agent_pos`` (2,) int64, ``reward_pos`` (2,) int64 (never in the
observation), ``hits`` episode hits so far, ``hit`` this step hit the reward, ``bumped`` this
step bumped a wall.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode

from bpm_envs import rendering
from bpm_envs.batched import BatchedSingleEnv, BatchedTask, BatchedVectorEnv

#: action index -> (d_row, d_col): up, down, left, right
MOVES = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.int64)
ACTION_NAMES = ("up", "down", "left", "right")
TRAIL_LENGTH = 8
CELL_PX = 32
BAR_PX = 10
FLASH_PX = 4


def _finite_number(name: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.integer, np.floating))
        or not np.isfinite(value)
    ):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def build_walls(size: int) -> np.ndarray:
    """Wall map (size + 2, size + 2) bool for an odd ``size`` >= 5: border, pillars, free centre."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 5 or size % 2 == 0:
        raise ValueError(f"size (the maze interior) must be an odd integer >= 5, got {size!r}")
    side = int(size) + 2
    walls = np.zeros((side, side), dtype=bool)
    walls[0, :] = walls[-1, :] = walls[:, 0] = walls[:, -1] = True
    walls[2:-1:2, 2:-1:2] = True
    centre = side // 2
    walls[centre, centre] = False
    return walls


class MazeTask(BatchedTask):
    """Maze rules for ``num_envs`` episodes; state held as flat cell indices into the wall map.

    State (B = num_envs): ``pos`` (B,), ``reward_cell`` (B,), ``teleport`` (B, T) targets drawn at
    the episode start (step ``t``'s hit lands on ``teleport[:, t]``), ``hits`` (B,), ``hit`` (B,),
    ``bumped`` (B,), ``trail`` (B, TRAIL_LENGTH) last cells walked to (-1 empty, newest first),
    ``hit_steps`` (B, T) bool history of hits for the time bar.
    """

    n_actions = 4
    task_feature_size = 9

    def __init__(
        self,
        num_envs: int = 1,
        size: int = 9,
        reward: float = 10.0,
        wall_penalty: float = 0.0,
        episode_length: int = 200,
    ) -> None:
        self.walls = build_walls(size)
        self.size = int(size)
        self.reward = _finite_number("reward", reward)
        if self.reward <= 0:
            raise ValueError(f"reward must be a finite number > 0, got {reward!r}")
        self.wall_penalty = _finite_number("wall_penalty", wall_penalty)
        if self.wall_penalty > 0:
            raise ValueError(
                "wall_penalty is the reward added on a wall bump and must be <= 0 "
                f"(e.g. -0.1), got {wall_penalty!r}"
            )
        self.max_abs_reward = max(abs(self.reward), abs(self.wall_penalty))
        super().__init__(num_envs, episode_length)

        side = self.walls.shape[1]
        self.side = side
        self._walls_flat = self.walls.ravel()
        self._walls_f32 = self._walls_flat.astype(np.float32)
        self.free_cells = np.flatnonzero(~self._walls_flat)  # sorted flat indices
        self.centre = (side // 2) * side + side // 2
        self._reward_candidates = self.free_cells[self.free_cells != self.centre]
        self._moves = MOVES[:, 0] * side + MOVES[:, 1]
        dr, dc = np.meshgrid([-1, 0, 1], [-1, 0, 1], indexing="ij")
        self._patch_offsets = (dr * side + dc).ravel()
        self._rows = np.arange(self.num_envs)

        B, T = self.num_envs, self.episode_length
        self.pos = np.full(B, self.centre, dtype=np.int64)
        self.reward_cell = np.full(B, self._reward_candidates[0], dtype=np.int64)
        self.teleport = np.zeros((B, T), dtype=np.int64)
        self.hits = np.zeros(B, dtype=np.int64)
        self.hit = np.zeros(B, dtype=bool)
        self.bumped = np.zeros(B, dtype=bool)
        self.trail = np.full((B, TRAIL_LENGTH), -1, dtype=np.int64)
        self.hit_steps = np.zeros((B, T), dtype=bool)

    def task_feature_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(9, dtype=np.float32), np.ones(9, dtype=np.float32)

    # ----------------------------------------------------------------- rules
    def begin_episodes(self, envs: np.ndarray, rngs: Sequence[np.random.Generator]) -> None:
        n_free = self.free_cells.size
        for env, rng in zip(envs, rngs):
            reward_cell = self._reward_candidates[rng.integers(self._reward_candidates.size)]
            # uniform over the free cells minus the reward cell: draw among n_free - 1 and skip it
            k = rng.integers(0, n_free - 1, size=self.episode_length)
            skip = np.searchsorted(self.free_cells, reward_cell)
            self.teleport[env] = self.free_cells[k + (k >= skip)]
            self.reward_cell[env] = reward_cell
        self.pos[envs] = self.centre
        self.hits[envs] = 0
        self.hit[envs] = False
        self.bumped[envs] = False
        self.trail[envs] = -1
        self.hit_steps[envs] = False

    def apply_actions(self, actions: np.ndarray) -> np.ndarray:
        target = self.pos + self._moves[actions]
        bumped = self._walls_flat[target]
        walked = np.where(bumped, self.pos, target)
        hit = walked == self.reward_cell
        step = np.minimum(self.t, self.episode_length - 1)  # envs already at T are discarded
        self.pos = np.where(hit, self.teleport[self._rows, step], walked)
        self.hit, self.bumped = hit, bumped
        self.hits += hit
        self.hit_steps[self._rows, step] |= hit & (self.t < self.episode_length)
        self.trail[:, 1:] = self.trail[:, :-1]
        self.trail[:, 0] = walked
        rewards = np.zeros(self.num_envs, dtype=np.float32)
        rewards[hit] = self.reward
        rewards[bumped] = self.wall_penalty
        return rewards

    def task_features(self) -> np.ndarray:
        return self._walls_f32[self.pos[:, None] + self._patch_offsets]

    def info(self) -> dict[str, np.ndarray]:
        return {
            "agent_pos": np.stack(np.divmod(self.pos, self.side), axis=1),
            "reward_pos": np.stack(np.divmod(self.reward_cell, self.side), axis=1),
            "hits": self.hits.copy(),
            "hit": self.hit.copy(),
            "bumped": self.bumped.copy(),
        }

    # ----------------------------------------------------------------- rendering
    def render_rgb(self, env: int) -> np.ndarray:
        """Frame of env ``env``: (side*32 + 10, side*32, 3) uint8, (362, 352, 3) for size 9.

        Walls dark, free cells light, the hidden reward cell green, the agent a blue disc, the
        last cells walked to fading light blue. On a step that hits the reward, the reward cell,
        the cell the agent was teleported to (under the disc) and a border around the maze flash
        yellow.
        Below the maze a time bar fills with t/T, with a yellow tick at each hit.
        """
        c = rendering.COLORS
        side = self.side
        colors = np.empty((side, side, 3), dtype=np.uint8)
        colors[...] = c["free"]
        colors[self.walls] = c["wall"]
        # oldest first so that newer trail cells overwrite older ones
        for age in range(TRAIL_LENGTH - 1, -1, -1):
            cell = self.trail[env, age]
            if cell >= 0:
                alpha = 1.0 - age / TRAIL_LENGTH
                colors[divmod(cell, side)] = rendering.blend(c["free"], c["trail"], alpha)
        hit = bool(self.hit[env])
        colors[divmod(self.reward_cell[env], side)] = c["flash"] if hit else c["reward"]
        if hit:  # mark where the teleport landed, too
            colors[divmod(self.pos[env], side)] = c["flash"]
        frame = rendering.paint_cells(colors, CELL_PX, grid_px=1)
        if hit:
            rendering.draw_border(frame, c["flash"], FLASH_PX)
        row, col = divmod(int(self.pos[env]), side)
        rendering.fill_disc(frame, row, col, CELL_PX, c["agent"])
        bar = rendering.timeline_bar(
            frame.shape[1],
            BAR_PX,
            int(self.t[env]),
            self.episode_length,
            ticks=np.flatnonzero(self.hit_steps[env]),
        )
        return rendering.stack_rows(frame, bar)

    def render_ansi(self, env: int) -> str:
        """Text map (# wall, A agent, R reward cell, . free) and a status line."""
        grid = np.where(self.walls, "#", ".")
        grid[divmod(self.reward_cell[env], self.side)] = "R"
        grid[divmod(self.pos[env], self.side)] = "A"
        lines = ["".join(row) for row in grid]
        status = (
            f"t={int(self.t[env])}/{self.episode_length} "
            f"reward={float(self.prev_reward[env]):+g} hits={int(self.hits[env])}"
        )
        if self.hit[env]:
            status += " HIT (teleported)"
        elif self.bumped[env]:
            status += " bumped wall"
        return "\n".join(lines + [status]) + "\n"


class PlasticMazeEnv(BatchedSingleEnv):
    """``bpm/PlasticMaze-v0``: one maze episode (the batch of one of :class:`MazeTask`).

    Keyword options: ``size`` (odd >= 5, default 9), ``reward`` (> 0, default 10),
    ``wall_penalty`` (<= 0, default 0), ``episode_length`` (>= 1, default 200).
    """

    task_cls = MazeTask
    metadata: dict[str, Any] = {
        "render_modes": ["human", "rgb_array", "ansi"],
        "render_fps": 10,
    }


class PlasticMazeVectorEnv(BatchedVectorEnv):
    """Native vector twin of :class:`PlasticMazeEnv` (next-step autoreset), same options."""

    task_cls = MazeTask
    metadata: dict[str, Any] = {
        "render_modes": ["rgb_array", "ansi"],
        "render_fps": 10,
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }
