"""Drawing shared by the tasks: numpy cell-grid painters, a pygame-ce window and a GIF writer.

Frames are ``(H, W, 3)`` uint8 numpy arrays (rows first, RGB), as Gymnasium's ``rgb_array`` mode
returns. The painters are plain numpy so that ``rgb_array`` rendering needs neither pygame nor a
display; pygame-ce is imported only when a :class:`HumanWindow` first shows a frame.

Typical use by a task's ``render_rgb`` (the cue task can do the same)::

    from bpm_envs import rendering as R

    colours = np.empty((rows, cols, 3), np.uint8)   # one RGB colour per cell
    colours[...] = R.COLORS["free"]
    colours[cue_bits > 0] = R.COLORS["positive"]
    frame = R.paint_cells(colours, cell_px=16, grid_px=1)          # (rows*16, cols*16, 3)
    R.fill_disc(frame, row, col, 16, R.COLORS["agent"])            # in place
    frame = R.stack_rows(frame, R.timeline_bar(frame.shape[1], 8, t, T, ticks=hit_steps))
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bpm_envs.checks import require_int

Color = tuple[int, int, int]

#: Named colours used by the tasks' frames (RGB). Tests look colours up here.
COLORS: dict[str, Color] = {
    "wall": (46, 52, 64),
    "free": (236, 239, 244),
    "grid": (216, 222, 233),
    "agent": (37, 99, 235),
    "trail": (147, 197, 253),
    "reward": (34, 160, 80),
    "flash": (250, 204, 21),
    "positive": (22, 163, 74),
    "negative": (220, 38, 38),
    "neutral": (148, 163, 184),
    "bar_bg": (203, 213, 225),
    "bar_fg": (71, 85, 105),
}


def _check_color(color: Sequence[int]) -> np.ndarray:
    arr = np.asarray(color)
    if arr.shape != (3,) or np.any(arr < 0) or np.any(arr > 255):
        raise ValueError(f"a colour must be 3 integers in 0..255, got {color!r}")
    return arr.astype(np.uint8)


def check_frame(frame: Any) -> np.ndarray:
    """Return ``frame`` if it is an (H, W, 3) uint8 array with H, W >= 1; else raise ValueError."""
    arr = np.asarray(frame)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or 0 in arr.shape:
        raise ValueError(f"a frame must be an (H, W, 3) uint8 array, got shape {arr.shape} dtype {arr.dtype}")
    return arr


def blend(a: Sequence[int], b: Sequence[int], alpha: float) -> Color:
    """Colour ``(1 - alpha) * a + alpha * b``, rounded; ``alpha`` in [0, 1]."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    mixed = (1.0 - alpha) * np.asarray(a, float) + alpha * np.asarray(b, float)
    return tuple(int(v) for v in np.rint(mixed))  # type: ignore[return-value]


def paint_cells(
    colors: np.ndarray, cell_px: int, grid_px: int = 0, grid_color: Sequence[int] = COLORS["grid"]
) -> np.ndarray:
    """Paint a grid of coloured cells: ``colors`` (R, C, 3) uint8 -> (R*cell_px, C*cell_px, 3).

    Each cell becomes a ``cell_px`` x ``cell_px`` square; with ``grid_px > 0`` the first
    ``grid_px`` rows and columns of every cell are painted ``grid_color`` (thin grid lines).
    """
    colors = np.asarray(colors)
    if colors.ndim != 3 or colors.shape[2] != 3 or colors.dtype != np.uint8:
        raise ValueError(
            f"colors must be an (R, C, 3) uint8 array, got shape {colors.shape} dtype {colors.dtype}"
        )
    cell_px = require_int("cell_px", cell_px)
    if not 0 <= grid_px < cell_px:
        raise ValueError(f"grid_px must be in 0..{cell_px - 1} (cell_px - 1), got {grid_px!r}")
    frame = np.repeat(np.repeat(colors, cell_px, axis=0), cell_px, axis=1)
    if grid_px:
        line = _check_color(grid_color)
        for k in range(grid_px):
            frame[k::cell_px, :, :] = line
            frame[:, k::cell_px, :] = line
    return frame


def _cell_box(frame: np.ndarray, row: int, col: int, cell_px: int) -> tuple[int, int]:
    top, left = row * cell_px, col * cell_px
    if not (0 <= top and top + cell_px <= frame.shape[0] and 0 <= left and left + cell_px <= frame.shape[1]):
        raise ValueError(f"cell ({row}, {col}) of {cell_px} px lies outside a frame of shape {frame.shape}")
    return top, left


def fill_inset(
    frame: np.ndarray, row: int, col: int, cell_px: int, color: Sequence[int], margin: int = 0
) -> np.ndarray:
    """Fill cell (``row``, ``col``) of ``frame`` with ``color``, leaving ``margin`` px on each side.

    Modifies ``frame`` in place and returns it.
    """
    top, left = _cell_box(frame, row, col, cell_px)
    if not 0 <= 2 * margin < cell_px:
        raise ValueError(f"margin must be in 0..{(cell_px - 1) // 2} for {cell_px} px cells, got {margin!r}")
    frame[top + margin : top + cell_px - margin, left + margin : left + cell_px - margin] = _check_color(
        color
    )
    return frame


def fill_disc(
    frame: np.ndarray, row: int, col: int, cell_px: int, color: Sequence[int], radius_frac: float = 0.36
) -> np.ndarray:
    """Draw a disc of radius ``radius_frac * cell_px`` centred in cell (``row``, ``col``), in place.

    The cell's centre pixel, (row * cell_px + cell_px // 2, col * cell_px + cell_px // 2), is
    always painted.
    """
    top, left = _cell_box(frame, row, col, cell_px)
    if not 0.0 < radius_frac <= 0.5:
        raise ValueError(f"radius_frac must be in (0, 0.5], got {radius_frac!r}")
    centre = cell_px // 2
    yy, xx = np.mgrid[0:cell_px, 0:cell_px]
    mask = (yy - centre) ** 2 + (xx - centre) ** 2 <= (radius_frac * cell_px) ** 2
    frame[top : top + cell_px, left : left + cell_px][mask] = _check_color(color)
    return frame


def draw_border(frame: np.ndarray, color: Sequence[int], width: int) -> np.ndarray:
    """Paint a ``width``-px frame around the whole image, in place (used as a flash on events)."""
    if not 1 <= 2 * width <= min(frame.shape[:2]):
        raise ValueError(f"border width must be in 1..{min(frame.shape[:2]) // 2}, got {width!r}")
    c = _check_color(color)
    frame[:width], frame[-width:], frame[:, :width], frame[:, -width:] = c, c, c, c
    return frame


def timeline_bar(
    width: int,
    height: int,
    t: int,
    total: int,
    ticks: Iterable[int] = (),
    fg: Sequence[int] = COLORS["bar_fg"],
    bg: Sequence[int] = COLORS["bar_bg"],
    tick_color: Sequence[int] = COLORS["flash"],
) -> np.ndarray:
    """A text-free time bar (height, width, 3) uint8: filled up to ``t / total``, events ticked.

    The filled part covers columns ``[0, round(width * t / total))``; while ``total <= width`` it
    grows by at least one column per step, so consecutive frames always differ (GIF writers drop
    repeated frames). Each step in ``ticks`` (0 <= s < total) draws a ``tick_color`` column at
    ``floor(width * (s + 0.5) / total)`` over the bar's full height.
    """
    if width < 1 or height < 1:
        raise ValueError(f"bar width and height must be >= 1, got {width}x{height}")
    if total < 1 or not 0 <= t <= total:
        raise ValueError(f"need 0 <= t <= total and total >= 1, got t={t}, total={total}")
    bar = np.empty((height, width, 3), dtype=np.uint8)
    bar[:] = _check_color(bg)
    bar[:, : int(round(width * t / total))] = _check_color(fg)
    steps = np.asarray(list(ticks), dtype=np.int64)
    if steps.size:
        if steps.min() < 0 or steps.max() >= total:
            raise ValueError(f"ticks must be steps in 0..{total - 1}, got {steps.tolist()}")
        cols = np.floor(width * (steps + 0.5) / total).astype(np.int64)
        bar[:, cols] = _check_color(tick_color)
    return bar


def stack_rows(*parts: np.ndarray) -> np.ndarray:
    """Stack frames of equal width top to bottom."""
    widths = {p.shape[1] for p in parts}
    if len(widths) != 1:
        raise ValueError(f"parts must share one width, got widths {sorted(widths)}")
    return np.concatenate(parts, axis=0)


# ----------------------------------------------------------------------------- text
_FONTS: dict[int, Any] = {}


def _font(size: int) -> Any:
    """pygame-ce's default font at ``size`` px (no display needed; works with SDL_VIDEODRIVER=dummy)."""
    if size not in _FONTS:
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        from bpm_envs.extras import require

        pygame = require("pygame", "drawing the frames' labels")
        if not pygame.font.get_init():
            pygame.font.init()
        _FONTS[size] = pygame.font.Font(None, size)
    return _FONTS[size]


def text_image(
    text: str,
    size: int = 18,
    color: Sequence[int] = COLORS["wall"],
    background: Sequence[int] = COLORS["free"],
) -> np.ndarray:
    """``text`` drawn in pygame-ce's default font: (line height, text width, 3) uint8.

    Not anti-aliased, so a frame keeps two colours per label (GIF palettes stay exact).
    """
    font = _font(size)  # first: it names the extra if pygame-ce is missing
    import pygame

    surface = font.render(str(text), False, tuple(_check_color(color)), tuple(_check_color(background)))
    if surface.get_width() == 0:
        return np.empty((font.get_linesize(), 0, 3), dtype=np.uint8)
    return np.ascontiguousarray(pygame.surfarray.array3d(surface).transpose(1, 0, 2)).astype(np.uint8)


def draw_text(
    frame: np.ndarray,
    text: str,
    x: int,
    y: int,
    size: int = 18,
    color: Sequence[int] = COLORS["wall"],
    background: Sequence[int] | None = None,
) -> int:
    """Draw ``text`` into ``frame`` in place with its top-left corner at (x, y), clipped to the
    frame; ``background`` defaults to the frame's colour there. Returns the text's width in px."""
    bg = (
        tuple(int(v) for v in frame[min(y, frame.shape[0] - 1), min(x, frame.shape[1] - 1)])
        if background is None
        else background
    )
    img = text_image(text, size, color, bg)
    h = min(img.shape[0], frame.shape[0] - y)
    w = min(img.shape[1], frame.shape[1] - x)
    if h > 0 and w > 0:
        frame[y : y + h, x : x + w] = img[:h, :w]
    return int(img.shape[1])


def caption_strip(
    width: int,
    text: str,
    height: int = 18,
    size: int = 16,
    color: Sequence[int] = COLORS["wall"],
    background: Sequence[int] = COLORS["grid"],
) -> np.ndarray:
    """A (height, width, 3) strip holding one line of text, for captions under or over frames."""
    strip = np.empty((height, width, 3), dtype=np.uint8)
    strip[:] = _check_color(background)
    draw_text(strip, text, 4, max(0, (height - _font(size).get_linesize()) // 2 + 1), size, color, background)
    return strip


class HumanWindow:
    """A pygame-ce window that shows ``(H, W, 3)`` uint8 frames at most ``fps`` times a second.

    pygame is imported on the first :meth:`show`, so building an env with ``render_mode="human"``
    costs nothing until it draws. Works headless with ``SDL_VIDEODRIVER=dummy``. If the user
    closes the window, :attr:`closed_by_user` turns True and later frames are ignored.
    pygame holds one display per process, so two live windows share it: the last to draw
    (re)opens it at its own size.
    """

    def __init__(self, title: str = "bpm", fps: float = 10) -> None:
        if (
            isinstance(fps, bool)
            or not isinstance(fps, (int, float, np.integer, np.floating))
            or not np.isfinite(fps)
            or fps <= 0
        ):
            raise ValueError(f"fps must be a finite number > 0, got {fps!r}")
        self.title = str(title)
        self.fps = float(fps)
        self.closed_by_user = False
        self._pygame: Any = None
        self._screen: Any = None
        self._clock: Any = None

    @property
    def is_open(self) -> bool:
        return self._screen is not None

    def _open(self, width: int, height: int) -> None:
        if self._pygame is None:
            os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
            from bpm_envs.extras import require

            pygame = require("pygame", "a render window")

            self._pygame = pygame
        pg = self._pygame
        pg.display.init()
        self._screen = pg.display.set_mode((width, height))
        pg.display.set_caption(self.title)
        self._clock = pg.time.Clock()

    def show(self, frame: np.ndarray) -> None:
        """Draw ``frame`` (H, W, 3) uint8; wait so that frames come at most ``fps`` a second."""
        frame = check_frame(frame)
        if self.closed_by_user:
            return
        height, width = frame.shape[:2]
        pg = self._pygame
        # pygame has one display per process: another window may have closed or replaced ours
        if (
            self._screen is None
            or not pg.display.get_init()
            or pg.display.get_surface() is not self._screen
            or self._screen.get_size() != (width, height)
        ):
            self._open(width, height)
            pg = self._pygame
        for event in pg.event.get():
            if event.type == pg.QUIT:
                self.closed_by_user = True
                self.close()
                return
        # pygame surfaces are indexed (x, y): swap the row and column axes
        surface = pg.surfarray.make_surface(np.ascontiguousarray(frame.transpose(1, 0, 2)))
        self._screen.blit(surface, (0, 0))
        pg.display.flip()
        self._clock.tick(self.fps)

    def close(self) -> None:
        """Close the window (idempotent)."""
        if self._screen is not None:
            pg = self._pygame
            if pg.display.get_init() and pg.display.get_surface() is self._screen:
                pg.display.quit()
            self._screen = None
            self._clock = None


class HumanRendering:
    """The ``render_mode="human"`` window of an env, shared by the bpm tasks' single envs.

    An env mixes this in and calls :meth:`show_in_window` from ``render`` and
    :meth:`close_window` from ``close``. The window (a :class:`HumanWindow`) opens on the first
    frame.

    :attr:`window_closed` is the public way to know that the user closed the window (its close
    button: a pygame ``QUIT`` event, seen when the next frame is drawn). It is False before a
    window exists, in the other render modes and while the window is open; once True it stays
    True for the env's lifetime, also after ``env.close()``, and later frames are not drawn. A
    program that closes the env itself (``env.close()``) does not set it. Code that drives an
    episode with ``render_mode="human"`` can stop when it turns True::

        while not done and not env.unwrapped.window_closed:
            obs, reward, terminated, truncated, info = env.step(policy(obs))
    """

    _window: HumanWindow | None = None
    _window_closed_by_user: bool = False

    @property
    def window_closed(self) -> bool:
        """True once the user has closed the env's render window (see the class docstring)."""
        window = self._window
        return self._window_closed_by_user or (window is not None and window.closed_by_user)

    def show_in_window(self, frame: np.ndarray, title: str, fps: float) -> None:
        """Draw ``frame`` in the env's window, opening it on first use; nothing once the user closed it."""
        if self.window_closed:
            self._window_closed_by_user = True
            return
        if self._window is None:
            self._window = HumanWindow(title=title, fps=fps)
        self._window.show(frame)
        if self._window.closed_by_user:
            self._window_closed_by_user = True

    def close_window(self) -> None:
        """Close the window if one is open (idempotent); :attr:`window_closed` keeps its value."""
        if self._window is not None:
            self._window_closed_by_user = self._window_closed_by_user or self._window.closed_by_user
            self._window.close()
            self._window = None


def _to_palette_images(frames: Sequence[np.ndarray]) -> list[Any]:
    """Frames -> Pillow images for a GIF; exact colours through one shared palette when they fit.

    Task frames use a few dozen colours, so indexing them directly is exact and about ten times
    faster than Pillow's per-frame quantisation, which remains the fallback above 256 colours.
    """
    from bpm_envs.extras import require

    Image = require("PIL.Image", "saving a GIF")

    packed = [
        (f[..., 0].astype(np.int32) << 16) | (f[..., 1].astype(np.int32) << 8) | f[..., 2] for f in frames
    ]
    seen = np.zeros(1 << 24, dtype=bool)
    for p in packed:
        seen[p] = True
    colours = np.flatnonzero(seen)
    if colours.size > 256:
        return [Image.fromarray(f) for f in frames]
    lut = np.zeros(1 << 24, dtype=np.uint8)
    lut[colours] = np.arange(colours.size, dtype=np.uint8)
    palette = np.stack([colours >> 16, (colours >> 8) & 255, colours & 255], axis=1)
    palette = palette.astype(np.uint8).ravel().tolist()
    images = []
    for p in packed:
        image = Image.fromarray(lut[p])
        image.putpalette(palette)
        images.append(image)
    return images


def save_gif(frames: Sequence[np.ndarray], path: str | os.PathLike[str], fps: float = 10) -> Path:
    """Write ``frames`` ((H, W, 3) uint8, one shape) as a looping GIF at ``fps``; return its path.

    Pillow merges a frame identical to the one before it into a single longer frame, so a GIF
    holds one frame per *change*; the maze's frames include a time bar and always change.
    """
    frames = list(frames)
    if not frames:
        raise ValueError("save_gif needs at least one frame, got none")
    checked = [check_frame(f) for f in frames]
    shapes = {f.shape for f in checked}
    if len(shapes) != 1:
        raise ValueError(f"all frames must have one shape, got {sorted(shapes)}")
    if isinstance(fps, bool) or not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a finite number > 0, got {fps!r}")
    images = _to_palette_images(checked)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(
        out,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=max(1, int(round(1000.0 / fps))),
        loop=0,
    )
    return out
