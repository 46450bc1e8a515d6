"""Procedural poster renderer for the miniature world (NumPy + Pillow, deterministic per seed).

Drawn at 128², BOX-downsampled to the output size, as in the feasibility study
(../shared/reference/miniworld.md §1.1): a vertical background gradient (brightness 0.8–1.15 at each
end), the motif in the accent colour with random count/size/phase/position, the title band, and
pixel noise σ=4. Composition rule (world.py): palette from the first block, motifs and accents from
the later blocks (up to world.MOTIF_BLOCKS distinct genres, each in its own horizontal strip of the
part the band leaves free), title band from the target-only attribute.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from tasks.miniworld import world

CANVAS = 128
NOISE_SIGMA = 4.0


def _rng(seed: int) -> np.random.Generator:
    # Same generator as pmg_models.runtime.host_rng, without importing MindSpore into a renderer.
    return np.random.Generator(np.random.PCG64(int(seed)))


def poster_seed(movie_id: int, seed: int = 0) -> int:
    """The render seed of one movie's poster: independent streams per (seed, movie id)."""
    return int(np.random.SeedSequence([int(seed), int(movie_id)]).generate_state(1, np.uint64)[0])


def _gradient(rgb, rng) -> Image.Image:
    top, bottom = rng.uniform(0.8, 1.15, 2)
    factor = np.linspace(top, bottom, CANVAS, dtype=np.float32)[:, None, None]
    column = np.clip(np.asarray(rgb, np.float32)[None, None, :] * factor, 0, 255).astype(np.uint8)  # (128, 1, 3)
    return Image.fromarray(np.ascontiguousarray(np.broadcast_to(column, (CANVAS, CANVAS, 3))))


def _centre(rng, rows):
    """A shape centre inside the canvas, with its row in `rows` (the part the title band leaves free)."""
    return rng.uniform(6, CANVAS - 6), rng.uniform(*rows)


def _circles(draw, colour, rng, rows):
    for _ in range(rng.integers(3, 8)):
        r = rng.uniform(8, 20)
        x, y = _centre(rng, rows)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)


def _stripes(draw, colour, rng, rows):
    period = rng.uniform(14, 24)
    width = period * rng.uniform(0.35, 0.55)
    for y in np.arange(rng.uniform(0, period) - period, CANVAS, period):
        draw.rectangle([0, y, CANVAS, y + width], fill=colour)


def _triangles(draw, colour, rng, rows):
    for _ in range(rng.integers(3, 7)):
        s = rng.uniform(14, 30)
        x, y = _centre(rng, rows)
        draw.polygon([(x, y - s), (x - 0.8 * s, y + 0.6 * s), (x + 0.8 * s, y + 0.6 * s)], fill=colour)


def _stars(draw, colour, rng, rows):
    for _ in range(rng.integers(3, 8)):
        r = rng.uniform(8, 18)
        x, y = _centre(rng, rows)
        turn = rng.uniform(-0.3, 0.3) - np.pi / 2
        angles = turn + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.42 * r)
        draw.polygon(list(zip(x + radii * np.cos(angles), y + radii * np.sin(angles))), fill=colour)


def _grid(draw, colour, rng, rows):
    period = rng.uniform(16, 26)
    width = rng.uniform(3, 5.5)
    px, py = rng.uniform(0, period, 2)
    for c in np.arange(px - period, CANVAS, period):
        draw.rectangle([c, 0, c + width, CANVAS], fill=colour)
    for c in np.arange(py - period, CANVAS, period):
        draw.rectangle([0, c, CANVAS, c + width], fill=colour)


def _diagonal(draw, colour, rng, rows):
    period = rng.uniform(14, 22)
    # Line width is measured across the line, so 0.25–0.35 of the horizontal period covers ~35–50 %.
    width = int(round(period * rng.uniform(0.25, 0.35)))
    for c in np.arange(rng.uniform(0, period) - CANVAS - period, CANVAS + period, period):
        draw.line([(c, -8), (c + CANVAS + 16, CANVAS + 8)], fill=colour, width=width)


_MOTIF_DRAWERS = {"circles": _circles, "stripes": _stripes, "triangles": _triangles,
                  "stars": _stars, "grid": _grid, "diagonal": _diagonal}
assert tuple(_MOTIF_DRAWERS) == world.MOTIFS


_BAND_FREE_ROWS = {None: (6, CANVAS - 6), "top": (42, CANVAS - 6), "bottom": (6, CANVAS - 42)}


def _band(draw, attribute: world.MovieAttribute, rng):
    """A title band with light/dark "text" dashes, inset from the edges."""
    height = rng.uniform(20, 26)
    margin = rng.uniform(4, 10)
    top = margin if attribute.position == "top" else CANVAS - margin - height
    left, right = rng.uniform(6, 14), CANVAS - rng.uniform(6, 14)
    draw.rectangle([left, top, right, top + height], fill=attribute.rgb)
    x, y0 = left + 6, top + height * 0.35
    while x < right - 14:
        w = rng.uniform(5, 12)
        draw.rectangle([x, y0, x + w, y0 + height * 0.3], fill=attribute.text_rgb)
        x += w + rng.uniform(3, 6)


def _strips(image: Image.Image, motifs, rng, rows) -> Image.Image:
    """Each motif drawn on its own copy of the background, kept in one horizontal strip of the canvas.

    The free rows are cut into equal strips (shape centres stay inside their strip); strip i's pixels
    run from its upper cut to its lower one, the first from the top edge and the last to the bottom.
    """
    cuts = np.linspace(rows[0], rows[1], len(motifs) + 1)
    edges = [0] + [int(round(c)) for c in cuts[1:-1]] + [CANVAS]
    out = image.copy()
    for i, style in enumerate(motifs):
        layer = image.copy()
        _MOTIF_DRAWERS[style.motif](ImageDraw.Draw(layer), style.accent_rgb, rng, (cuts[i], cuts[i + 1]))
        box = (0, edges[i], CANVAS, edges[i + 1])
        out.paste(layer.crop(box), box)
    return out


def render(genres_blocks: Sequence, movie_attr: world.MovieAttribute | None, seed: int, size: int = 32) -> np.ndarray:
    """One poster as uint8 [size, size, 3].

    Args:
        genres_blocks: blocks as genre tokens ("Comedy") or keyword lists (["comedy", ...]); the first
            gives the background palette, the later ones (or the only one) the motifs and accent colours
            (world.motif_genres).
        movie_attr: the target's title band, or None for a poster without one.
        seed: same seed ⇒ identical pixels.
        size: output side; 128 must be a multiple of it for an exact BOX downsample.
    """
    if not len(genres_blocks):
        raise ValueError("a poster needs at least one genre block")
    first = world.STYLES[world.genre_of(genres_blocks[0])]
    motifs = [world.STYLES[g] for g in world.motif_genres(genres_blocks)]
    rng = _rng(seed)
    image = _gradient(first.background_rgb, rng)
    # Shapes are centred away from the band (drawn last, on top) so it cannot hide the motif.
    rows = _BAND_FREE_ROWS[movie_attr.position if movie_attr is not None else None]
    image = _strips(image, motifs, rng, rows)  # one motif: one strip, the whole canvas
    draw = ImageDraw.Draw(image)
    if movie_attr is not None:
        _band(draw, movie_attr, rng)
    if size != CANVAS:
        image = image.resize((size, size), Image.BOX)
    pixels = np.asarray(image, np.float32) + NOISE_SIGMA * rng.standard_normal((size, size, 3), dtype=np.float32)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 array (fixed settings, so equal pixels give equal bytes)."""
    buf = io.BytesIO()
    # Level 1: noisy posters barely compress further, and encoding was a third of the render time.
    Image.fromarray(pixels, "RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _write_if_changed(path: Path, data: bytes) -> bool:
    """Write `data` atomically (temp name + rename) unless the file already holds exactly these bytes."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return True


def render_movie_posters(movies: Iterable[tuple[int, Sequence[str]]], out_dir, size: int = 64, seed: int = 0) -> int:
    """Write one poster per movie as `out_dir/<movie_id>.png`; returns how many files were (re)written.

    A movie's poster uses its first three known genres (world.poster_genres: IMAX and
    "(no genres listed)" are skipped; a movie with no known genre gets world.FALLBACK_GENRE) and its
    own title band (world.movie_attribute). Existing identical files are left untouched, so
    re-running is cheap and safe; a killed run leaves no half-written PNG under the final name.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for movie_id, genres in movies:
        pixels = render(world.poster_genres(genres), world.movie_attribute(movie_id),
                        poster_seed(movie_id, seed), size)
        written += _write_if_changed(out / f"{int(movie_id)}.png", encode_png(pixels))
    return written


@dataclass(frozen=True)
class Dataset:
    """Procedural posters with their captions' structure; `labels` holds class indices per head."""
    images: np.ndarray                          # (N, size, size, 3) uint8
    blocks: list                                # per image: tuple of genre tokens, first → palette
    attributes: list                            # per image: MovieAttribute or None
    labels: dict                                # head name → (N,) int32, see world.labels

    def captions(self) -> list[str]:
        return [world.caption(b, a) for b, a in zip(self.blocks, self.attributes)]


def random_blocks(rng: np.random.Generator, two_genre_p: float = 0.6, three_genre_p: float = 0.0,
                  repeat_first_p: float = 0.0) -> tuple[str, ...]:
    """One genre, an ordered pair of distinct genres w.p. `two_genre_p`, or a triple w.p. `three_genre_p`;
    then, w.p. `repeat_first_p`, the first block repeated in second place (A → A A, A B → A A B).

    Triples are the shape of a PMG prompt in this world (target block + two preference blocks): the
    first block gives the palette, the second and third a motif each. A repeated first block is a PMG
    prompt whose first preference is the target's own genre: its motif then joins the next block's. With both
    probabilities 0 the draws are the same as before these shapes existed, so the CLIP and classifier
    datasets did not change.
    """
    if three_genre_p and rng.random() < three_genre_p:
        blocks = tuple(world.GENRES[i] for i in rng.choice(len(world.GENRES), 3, replace=False))
    elif rng.random() < two_genre_p:
        a, b = rng.choice(len(world.GENRES), 2, replace=False)
        blocks = world.GENRES[a], world.GENRES[b]
    else:
        blocks = (world.GENRES[rng.integers(len(world.GENRES))],)
    if repeat_first_p and rng.random() < repeat_first_p:
        blocks = (blocks[0],) + blocks[:2]
    return blocks


def sample_dataset(n: int, seed: int, size: int = 32, two_genre_p: float = 0.6, band_p: float = 0.85,
                   three_genre_p: float = 0.0, repeat_first_p: float = 0.0) -> Dataset:
    """`n` posters with random captions, reproducible from `seed` (use different seeds for train/val)."""
    rng = _rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    blocks, attributes = [], []
    for i in range(n):
        blk = random_blocks(rng, two_genre_p, three_genre_p, repeat_first_p)
        attr = world.ATTRIBUTES[rng.integers(len(world.ATTRIBUTES))] if rng.random() < band_p else None
        images[i] = render(blk, attr, int(rng.integers(2**63)), size)
        blocks.append(blk)
        attributes.append(attr)
    per_image = [world.labels(b, a) for b, a in zip(blocks, attributes)]
    labels = {h: np.array([lab[h] for lab in per_image], np.int32) for h in world.HEADS}
    return Dataset(images, blocks, attributes, labels)


def grid(images: np.ndarray, columns: int, scale: int = 1, pad: int = 2) -> np.ndarray:
    """Tile (N, H, W, 3) images into one uint8 sheet (white padding), optionally enlarged `scale`×."""
    n, h, w, _ = images.shape
    rows = -(-n // columns)
    sheet = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        sheet[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = img
    return sheet.repeat(scale, 0).repeat(scale, 1) if scale > 1 else sheet
