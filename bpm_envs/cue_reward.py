"""Cue-reward association task (Backpropamine paper, Fig. 1; released-code version).

Each episode draws ``n_cues`` distinct cues of ``cue_bits`` random +-1 bits and picks one of them as
the target. The episode is a sequence of trials of 5-8 steps (length uniform per trial):

    blank, [the 2 cues of the pair shuffled with L-5 blank steps], Go, blank

The pair holds 2 distinct cues: with probability 1/2 the target and one random non-target, otherwise
two distinct non-targets. The action taken on the Go step is the answer (1 = "the target was in the
pair", 0 = "it was not"): reward +1 if right, -1 if wrong; every other step gives 0. Trials repeat
until ``episode_length`` steps (default 120); the last trial may be cut. The episode never
terminates early; it is truncated at ``episode_length``.

Observation (float32, length ``cue_bits + 5``; 25 by default), index by index:

====================  ==========================================================================
index                 meaning
====================  ==========================================================================
0 .. cue_bits-1       bits of the cue shown at this step (+-1; 0/1 one-hot in ``fixed_cues`` mode;
                      all zeros on blank and Go steps)
cue_bits              Go bit: 1 on the step whose action is the answer, else 0
cue_bits+1            reward of the previous step (0 at t=0)
cue_bits+2            1 if the previous action was 0 ("target not in pair"), else 0 (0 at t=0)
cue_bits+3            1 if the previous action was 1 ("target in pair"), else 0 (0 at t=0)
cue_bits+4            t / episode_length (0 at reset, 1 in the final observation)
====================  ==========================================================================

The final observation (``t == episode_length``) shows a blank step.

``info`` (one value per env; for the vector env an array with leading dimension ``num_envs``)
describes the step shown in the returned observation, except ``answer_correct``:

- ``target`` (int): id of the target cue (0 .. n_cues-1).
- ``pair`` (int, shape (2,)): ids of the 2 cues of the current trial, in the order shown.
- ``target_in_pair`` (bool): whether the target is in the current pair (the right answer is 1).
- ``trial`` (int): index of the current trial, from 0.
- ``go`` (bool): whether this step is a Go step.
- ``trial_start`` (bool): whether a new trial starts at this step.
- ``answer_correct`` (int8): grades the action just taken: 1 right Go answer, 0 wrong Go answer,
  -1 the action was not taken on a Go step (and at reset).

In the final observation the step is blank and the trial fields repeat those of the last step.

Reading them: the helpers at the end of this module are the one public way to decode the
observation layout and the ``info`` fields outside the task: :data:`NON_CUE_INPUTS` and
:func:`cue_bits_of` (the layout above), :func:`cue_visible`, :func:`is_cue_info`,
:func:`target_cue`, :func:`go_steps`, :func:`answers_from_infos` (each Go answer paired with its
trial: ``trial`` describes the step shown, ``answer_correct`` the action just taken, so they are one
info apart) and :func:`cue_shown` (the id of the cue shown at each step).

Options: ``n_cues`` (>= 3: with 2 cues a pair without the target cannot be drawn), ``cue_bits``
(default 20; ``n_cues <= 2**cue_bits``), ``episode_length`` (default 120), ``fixed_cues`` (the
control of the paper's appendix A.5: the cues are the one-hot vectors of ``n_cues`` bits, the same
every episode, so ``cue_bits`` is ``n_cues``; the target is still drawn per episode).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bpm_envs import rendering as R
from bpm_envs.batched import BatchedSingleEnv, BatchedTask, BatchedVectorEnv
from bpm_envs.checks import require_int

MIN_TRIAL_LENGTH = 5
MAX_TRIAL_LENGTH = 8
MIN_CUES = 3
# Above this many bits the cue integers would overflow int64: draw bit patterns and reject repeats
# (a repeat then has probability < n_cues**2 / 2**63).
_MAX_INT_CUE_BITS = 62
# Number of uniform numbers drawn per trial: length, target-in-pair, 2 non-targets, 2 slots.
_DRAWS_PER_TRIAL = 6


class CueRewardTask(BatchedTask):
    """Rules of the cue-reward task for ``num_envs`` episodes.

    The whole episode is planned in :meth:`begin_episodes`; stepping only indexes the plan.
    Plan arrays have shape (B, T+1): column T is the blank step of the final observation.
    """

    n_actions = 2

    def __init__(
        self,
        num_envs: int,
        n_cues: int = 4,
        cue_bits: int | None = None,
        episode_length: int = 120,
        fixed_cues: bool = False,
    ) -> None:
        if not isinstance(fixed_cues, (bool, np.bool_)):
            raise ValueError(f"fixed_cues must be True or False, got {fixed_cues!r}")
        n_cues = require_int("n_cues", n_cues, minimum=MIN_CUES)
        if fixed_cues:
            if cue_bits is not None and cue_bits != n_cues:
                raise ValueError(
                    f"fixed_cues uses one-hot cues, so cue_bits must equal n_cues={n_cues} "
                    f"(or be left out), got cue_bits={cue_bits!r}"
                )
            cue_bits = n_cues
        cue_bits = require_int("cue_bits", 20 if cue_bits is None else cue_bits)
        if n_cues > 2**cue_bits:
            raise ValueError(
                f"n_cues={n_cues} distinct cues need at least that many bit patterns, but "
                f"cue_bits={cue_bits} gives only {2**cue_bits}; allowed: n_cues <= 2**cue_bits"
            )
        episode_length = require_int("episode_length", episode_length)
        self.n_cues = n_cues
        self.cue_bits = cue_bits
        self.fixed_cues = bool(fixed_cues)
        self.task_feature_size = cue_bits + 1
        super().__init__(num_envs=num_envs, episode_length=episode_length)

        b, t1 = self.num_envs, episode_length + 1
        # Enough trials to cover T+1 steps even if every trial has the minimum length.
        self._n_trials = -(-t1 // MIN_TRIAL_LENGTH)
        # Flat index of (env, step) in the (B, T+1) plans: row start + t, one gather per array.
        self._row_start = np.arange(b) * t1
        # Row n_cues of each env's table is the blank (all-zero) input.
        self.cue_table = np.zeros((b, n_cues + 1, cue_bits), dtype=np.float32)
        self.target = np.zeros(b, dtype=np.int64)
        self.stim = np.full((b, t1), n_cues, dtype=np.int64)
        self.go = np.zeros((b, t1), dtype=bool)
        self.trial_start = np.zeros((b, t1), dtype=bool)
        self.trial = np.zeros((b, t1), dtype=np.int64)
        self.pair = np.zeros((b, t1, 2), dtype=np.int64)
        self.target_in_pair = np.zeros((b, t1), dtype=bool)
        # Task features of every step, ready to gather: (B, T+1, cue_bits + 1).
        self.features = np.zeros((b, t1, self.task_feature_size), dtype=np.float32)
        # Code of each step for the reward tables: 0 not a Go step, 1 answer 0 is right, 2 answer 1.
        self.go_code = np.zeros((b, t1), dtype=np.int64)
        self.answer_correct = np.full(b, -1, dtype=np.int8)

    # ----------------------------------------------------------------- drawing an episode
    def _draw_cues(self, rng: np.random.Generator) -> np.ndarray:
        """``n_cues`` distinct cues (n_cues, cue_bits) float32."""
        if self.fixed_cues:
            return np.eye(self.n_cues, dtype=np.float32)
        if self.cue_bits <= _MAX_INT_CUE_BITS:
            codes = rng.choice(2**self.cue_bits, size=self.n_cues, replace=False)
            bits = (codes[:, None] >> np.arange(self.cue_bits)) & 1
        else:
            while True:
                bits = rng.integers(0, 2, size=(self.n_cues, self.cue_bits))
                if len(np.unique(bits, axis=0)) == self.n_cues:
                    break
        return (2 * bits - 1).astype(np.float32)

    def begin_episodes(self, envs: np.ndarray, rngs: Sequence[np.random.Generator]) -> None:
        envs = np.asarray(envs, dtype=np.int64)
        k, n, nc = len(envs), self._n_trials, self.n_cues
        if k == 0:
            return
        # The only per-env work: two draws from each env's own generator.
        cues = np.empty((k, nc, self.cue_bits), dtype=np.float32)
        u = np.empty((k, 1 + _DRAWS_PER_TRIAL * n))
        for i, rng in enumerate(rngs):
            cues[i] = self._draw_cues(rng)
            u[i] = rng.random(1 + _DRAWS_PER_TRIAL * n)

        def uniform_int(x: np.ndarray, high: np.ndarray | int) -> np.ndarray:
            # floor(u * high) is uniform on 0..high-1; the minimum guards against rounding up.
            return np.minimum((x * high).astype(np.int64), np.asarray(high) - 1)

        target = uniform_int(u[:, 0], nc)  # (k,)
        d = u[:, 1:].reshape(k, n, _DRAWS_PER_TRIAL)
        length = MIN_TRIAL_LENGTH + uniform_int(d[..., 0], MAX_TRIAL_LENGTH - MIN_TRIAL_LENGTH + 1)
        with_target = d[..., 1] < 0.5
        # Non-targets are numbered 0..nc-2; b is drawn distinct from a.
        nt_a = uniform_int(d[..., 2], nc - 1)
        nt_b = uniform_int(d[..., 3], nc - 2)
        nt_b += nt_b >= nt_a
        cue_a = nt_a + (nt_a >= target[:, None])
        cue_b = nt_b + (nt_b >= target[:, None])
        x = np.where(with_target, target[:, None], cue_a)
        y = np.where(with_target, cue_a, cue_b)
        # The L-3 middle slots hold the 2 cues and L-5 blanks: 2 distinct slots, ordered (x, y).
        middle = length - 3
        slot_x = uniform_int(d[..., 4], middle)
        slot_y = uniform_int(d[..., 5], middle - 1)
        slot_y += slot_y >= slot_x
        x_first = slot_x < slot_y
        first = np.where(x_first, x, y)
        second = np.where(x_first, y, x)

        # Map steps to trials: searchsorted over all envs at once, rows offset so they never mix.
        t1 = self.episode_length + 1
        ends = np.cumsum(length, axis=1)  # (k, n); ends[:, -1] >= 5n >= T+1
        span = int(ends[:, -1].max()) + 1
        offset = np.arange(k)[:, None] * span
        steps = np.arange(t1)[None, :]
        trial = np.searchsorted((ends + offset).ravel(), (steps + offset).ravel(), side="right")
        trial = trial.reshape(k, t1) - np.arange(k)[:, None] * n
        rows = np.arange(k)[:, None]
        pos = steps - (ends - length)[rows, trial]
        slot = pos - 1  # index into the middle slots
        stim = np.full((k, t1), nc, dtype=np.int64)
        np.copyto(stim, x[rows, trial], where=slot == slot_x[rows, trial])
        np.copyto(stim, y[rows, trial], where=slot == slot_y[rows, trial])
        go = pos == length[rows, trial] - 2
        trial_start = pos == 0
        pair = np.stack([first[rows, trial], second[rows, trial]], axis=-1)
        in_pair = with_target[rows, trial]
        # Final observation: a blank step that repeats the last step's trial fields.
        last = self.episode_length
        stim[:, last] = nc
        go[:, last] = False
        trial_start[:, last] = False
        trial[:, last] = trial[:, last - 1]
        pair[:, last] = pair[:, last - 1]
        in_pair[:, last] = in_pair[:, last - 1]

        self.cue_table[envs, :nc] = cues
        cues_blank = np.concatenate([cues, np.zeros((k, 1, self.cue_bits), np.float32)], axis=1)
        self.target[envs] = target
        self.stim[envs] = stim
        self.go[envs] = go
        self.trial_start[envs] = trial_start
        self.trial[envs] = trial
        self.pair[envs] = pair
        self.target_in_pair[envs] = in_pair
        self.features[envs, :, :-1] = cues_blank[np.arange(k)[:, None], stim]
        self.features[envs, :, -1] = go
        self.go_code[envs] = np.where(go, 1 + in_pair, 0)
        self.answer_correct[envs] = -1

    # ----------------------------------------------------------------- stepping
    def _flat(self) -> np.ndarray:
        # column T is a blank step, so t == episode_length is a valid index
        return self._row_start + self.t

    def apply_actions(self, actions: np.ndarray) -> np.ndarray:
        code = 2 * self.go_code.take(self._flat()) + actions
        self.answer_correct = _GRADE.take(code)
        return _REWARD.take(code)

    def task_features(self) -> np.ndarray:
        return self.features.reshape(-1, self.task_feature_size).take(self._flat(), axis=0)

    def task_feature_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        low = np.zeros(self.task_feature_size, dtype=np.float32)
        if not self.fixed_cues:
            low[:-1] = -1.0
        return low, np.ones(self.task_feature_size, dtype=np.float32)

    def info(self) -> dict[str, np.ndarray]:
        flat = self._flat()
        return {
            "target": self.target.copy(),
            "pair": self.pair.reshape(-1, 2).take(flat, axis=0),
            "target_in_pair": self.target_in_pair.take(flat),
            "trial": self.trial.take(flat),
            "go": self.go.take(flat),
            "trial_start": self.trial_start.take(flat),
            "answer_correct": self.answer_correct.copy(),
        }

    # ----------------------------------------------------------------- rendering
    def status_lines(self, env: int) -> tuple[str, str, str]:
        """The text of the labelled frame: (header, what is shown, what the last action did).

        For example ``("trial 3   step 17/120   reward so far +2", "cue 4", "answer 1 (target in
        pair): right, reward +1")``; on a Go step the middle line is ``"Go: answer now"``.
        """
        t = int(self.t[env])
        trial = int(self.trial[env, t])
        header = (
            f"trial {trial + 1}   step {t}/{self.episode_length}   "
            f"reward so far {float(self.return_so_far[env]):+g}"
        )
        stim = int(self.stim[env, t])
        if self.go[env, t]:
            shown = "Go: answer now"
        elif stim == self.n_cues:
            shown = "blank"
        else:
            shown = f"cue {stim}"
        grade = int(self.answer_correct[env])
        action = int(self.prev_action[env])
        if grade >= 0:
            meaning = "target in pair" if action == 1 else "target not in pair"
            result = (
                f"answer {action} ({meaning}): {'right' if grade == 1 else 'wrong'}, "
                f"reward {float(self.prev_reward[env]):+g}"
            )
        elif action >= 0:
            result = f"action {action} (not a Go step: no reward)"
        else:
            result = "no action yet"
        return header, shown, result

    def render_rgb(self, env: int) -> np.ndarray:
        """A labelled frame of the current step (needs pygame-ce for the text: the ``render`` extra).

        Layout, top to bottom (``(122, 104 + (cue_bits + 4) * 24, 3)`` uint8; (122, 680, 3) by
        default):

        - header: trial number, step ``t/T`` and the reward so far;
        - captions ``Go``, ``ans``, ``rew`` over the three status cells;
        - row "shown": the cue bits shown now (light +1, dark -1 or 0; grey on blank steps), then
          the Go cell (yellow on a Go step), the previous action (blue 1, light blue 0, grey
          none) and the previous reward (green +1, red -1, grey 0); its label names the cue
          (``cue 4``, ``blank`` or ``Go: answer now``);
        - row "target": the target's bits, for the viewer only (the agent never sees them);
        - the result of the last action: ``answer 1 (target in pair): right, reward +1`` (green)
          or ``... wrong, reward -1`` (red);
        - a time bar with a tick at every Go step.
        """
        t = int(self.t[env])
        nb = self.cue_bits
        colours = np.empty((2, nb + 4, 3), dtype=np.uint8)
        colours[:] = R.COLORS["grid"]
        stim = int(self.stim[env, t])
        if stim == self.n_cues:
            colours[0, :nb] = R.COLORS["neutral"]
        else:
            colours[0, :nb] = _bit_colours(self.cue_table[env, stim])
        colours[1, :nb] = _bit_colours(self.cue_table[env, self.target[env]])
        colours[0, nb + 1] = R.COLORS["flash" if self.go[env, t] else "neutral"]
        action = int(self.prev_action[env])
        colours[0, nb + 2] = R.COLORS[{-1: "neutral", 0: "trail", 1: "agent"}[action]]
        reward = float(self.prev_reward[env])
        colours[0, nb + 3] = R.COLORS["positive" if reward > 0 else "negative" if reward < 0 else "neutral"]
        cells = R.paint_cells(colours, cell_px=_CELL_PX, grid_px=1)
        header, shown, result = self.status_lines(env)
        width = _LABEL_PX + cells.shape[1]
        frame = np.empty((_FRAME_PX_ABOVE_CELLS + cells.shape[0] + _RESULT_PX, width, 3), np.uint8)
        frame[:] = R.COLORS["free"]
        R.draw_text(frame, header, 6, 4, _TEXT_SIZE)
        x0 = _LABEL_PX + (nb + 1) * _CELL_PX
        for k, word in enumerate(("Go", "ans", "rew")):
            R.draw_text(frame, word, x0 + k * _CELL_PX + 1, _HEADER_PX + 2, _SMALL_TEXT_SIZE)
        top = _FRAME_PX_ABOVE_CELLS
        frame[top : top + cells.shape[0], _LABEL_PX:] = cells
        go_now = bool(self.go[env, t])
        R.draw_text(
            frame,
            shown,
            6,
            top + 5,
            _TEXT_SIZE,
            R.COLORS["wall"],
            R.COLORS["flash"] if go_now else R.COLORS["free"],
        )
        R.draw_text(
            frame, f"target {int(self.target[env])}", 6, top + _CELL_PX + 5, _TEXT_SIZE, R.COLORS["neutral"]
        )
        grade = int(self.answer_correct[env])
        tint = (
            R.COLORS["positive"] if grade == 1 else R.COLORS["negative"] if grade == 0 else R.COLORS["wall"]
        )
        R.draw_text(frame, result, 6, top + cells.shape[0] + 5, _TEXT_SIZE, tint)
        go_steps = np.flatnonzero(self.go[env, : self.episode_length])
        bar = R.timeline_bar(width, 6, t, self.episode_length, ticks=go_steps)
        return R.stack_rows(frame, bar)

    def render_ansi(self, env: int) -> str:
        """One line for the current step, e.g.
        ``t=  3/120 trial  0 cue 2 +--+... go=.. last=1 r=+1 target=2``."""
        t = int(self.t[env])
        stim = int(self.stim[env, t])
        if stim == self.n_cues:
            shown = "blank ".ljust(6 + self.cue_bits)
        else:
            bits = self.cue_table[env, stim]
            shown = f"cue {stim} " + "".join("+" if v > 0 else "-" if v < 0 else "0" for v in bits)
        action = int(self.prev_action[env])
        return (
            f"t={t:3d}/{self.episode_length} trial {int(self.trial[env, t]):2d} {shown} "
            f"go={'GO' if self.go[env, t] else '..'} "
            f"last={'-' if action < 0 else action} r={float(self.prev_reward[env]):+.0f} "
            f"target={int(self.target[env])}"
        )


_CELL_PX = 24
#: layout of the labelled frame (see ``CueRewardTask.render_rgb``)
_TEXT_SIZE = 22
_SMALL_TEXT_SIZE = 16
_LABEL_PX = 104  # the label column left of the cells
_HEADER_PX = 22  # the header line
_FRAME_PX_ABOVE_CELLS = _HEADER_PX + 18  # header and the captions over the status cells
_RESULT_PX = 28  # the line of the last action's result
# Indexed by 2 * go_code + action (go_code: 0 not Go, 1 right answer is 0, 2 right answer is 1).
_REWARD = np.array([0.0, 0.0, 1.0, -1.0, -1.0, 1.0], dtype=np.float32)
_GRADE = np.array([-1, -1, 1, 0, 0, 1], dtype=np.int8)


def _bit_colours(bits: np.ndarray) -> np.ndarray:
    """(n,) cue bits -> (n, 3) uint8: light for +1, dark otherwise."""
    on = np.array(R.COLORS["free"], dtype=np.uint8)
    off = np.array(R.COLORS["wall"], dtype=np.uint8)
    return np.where((bits > 0)[:, None], on, off)


class CueRewardEnv(BatchedSingleEnv):
    """``bpm/CueReward-v0``: one cue-reward episode (the batch of one of :class:`CueRewardTask`).

    Args (keywords): ``n_cues=4``, ``cue_bits=20`` (or ``n_cues`` with ``fixed_cues``),
    ``episode_length=120``, ``fixed_cues=False``, ``render_mode`` in (None, "rgb_array", "ansi").
    """

    task_cls = CueRewardTask
    metadata: dict[str, Any] = {**BatchedSingleEnv.metadata, "render_modes": ["rgb_array", "ansi"]}


class CueRewardVectorEnv(BatchedVectorEnv):
    """Native vector twin of :class:`CueRewardEnv`: ``num_envs`` episodes as one numpy batch."""

    task_cls = CueRewardTask
    metadata: dict[str, Any] = {**BatchedVectorEnv.metadata, "render_modes": ["rgb_array", "ansi"]}


# ----------------------------------------------------------------------------- reading obs and info
# The one place outside the task that decodes its observation layout and its ``info`` fields (see
# the module docstring for both); evaluation and plots call these instead of indexing themselves.

#: observation entries after the cue bits: Go bit, previous reward, previous action one-hot (2), t/T
NON_CUE_INPUTS = 1 + 1 + CueRewardTask.n_actions + 1
#: the keys every cue ``info`` holds (:func:`is_cue_info` tests two of them)
INFO_KEYS = ("target", "pair", "target_in_pair", "trial", "go", "trial_start", "answer_correct")


def cue_bits_of(observations: np.ndarray | int) -> int:
    """Number of cue bits in a cue observation: its length minus :data:`NON_CUE_INPUTS`.

    ``observations`` is an observation size, or an array (..., D) of observations (one or many).
    """
    size = int(observations) if np.ndim(observations) == 0 else int(np.shape(observations)[-1])
    bits = size - NON_CUE_INPUTS
    if bits < 1:
        raise ValueError(
            f"a cue observation holds cue bits and {NON_CUE_INPUTS} more values, so its size is at "
            f"least {NON_CUE_INPUTS + 1}; got {size}"
        )
    return bits


def cue_visible(observations: np.ndarray, cue_bits: int | None = None) -> np.ndarray:
    """Whether a cue is shown in each observation (..., D) -> (...) bool: some cue bit is non-zero.

    Blank and Go steps show all-zero cue bits. ``cue_bits`` defaults to :func:`cue_bits_of`.
    """
    observations = np.asarray(observations)
    bits = cue_bits_of(observations) if cue_bits is None else int(cue_bits)
    return np.any(observations[..., :bits] != 0, axis=-1)


def is_cue_info(info: dict[str, Any]) -> bool:
    """Whether ``info`` (from ``reset`` or ``step``, single or vector env) is a cue task's info.

    Tests the keys ``answer_correct`` and ``trial``, which the other bpm tasks do not use.
    """
    return "answer_correct" in info and "trial" in info


def target_cue(info: dict[str, Any]) -> int:
    """Id of the episode's target cue (0 .. n_cues-1) from a single env's ``info`` (any step)."""
    return int(info["target"])


def go_steps(infos: Sequence[dict[str, Any]]) -> np.ndarray:
    """(T,) bool: whether each step of a single env's ``infos`` sequence is a Go step (``go``)."""
    return np.array([bool(i["go"]) for i in infos], dtype=bool)


def answers_from_infos(infos: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Pair each Go answer with its trial from a cue episode's info sequence.

    ``infos[0]`` is the info of ``reset`` and ``infos[t + 1]`` the info of the ``t``-th ``step``
    (single env: scalars; vector env: arrays (B,)). ``trial`` describes the step shown with the
    observation, so the action taken at step t belongs to ``infos[t]["trial"]``, while
    ``answer_correct`` grades the action just taken, so its grade is ``infos[t + 1]``'s.

    Returns:
        trial (B, T) and graded (B, T) int64 (1 right Go answer, 0 wrong Go answer, -1 not a Go
        step); B = 1 for a single env.
    """
    if len(infos) < 2:
        raise ValueError(f"need the reset info and at least one step info, got {len(infos)} infos")
    trial = np.stack([np.atleast_1d(i["trial"]) for i in infos[:-1]], axis=1)
    graded = np.stack([np.atleast_1d(i["answer_correct"]) for i in infos[1:]], axis=1)
    return trial, graded.astype(np.int64)


def cue_shown(
    observations: np.ndarray, infos: Sequence[dict[str, Any]], cue_bits: int | None = None
) -> np.ndarray:
    """Id of the cue shown at each step of a single cue episode, -1 on blank and Go steps.

    Uses only the public observation (cue bits non-zero when a cue is shown) and the info's
    ``pair`` (the trial's 2 cue ids in the order shown): the k-th cue step of a trial shows
    ``pair[k]``. ``observations`` (T, D) and ``infos`` (T entries) describe the same steps;
    ``cue_bits`` defaults to :func:`cue_bits_of` the observations.
    """
    shown = cue_visible(observations, cue_bits)
    trial = np.array([int(i["trial"]) for i in infos])
    pair = np.array([np.asarray(i["pair"]) for i in infos]).reshape(len(infos), 2)
    count = np.cumsum(shown)  # cue steps so far, this one included
    new_trial = np.r_[True, trial[1:] != trial[:-1]]
    # cue steps counted before each trial began, carried forward over the trial
    idx = np.maximum.accumulate(np.where(new_trial, np.arange(len(trial)), 0))
    before_trial = (count - shown)[idx]
    order = np.clip(count - before_trial - 1, 0, 1)
    return np.where(shown, pair[np.arange(len(trial)), order], -1)
