"""The miniature poster world as data: genre → (background, accent, motif), keyword blocks, captions.

Every MovieLens genre owns a background palette, an accent colour and a motif (table from the
feasibility study, ../shared/reference/miniworld.md §1.1, with Thriller moved to orange diagonals so
no two genres share an (accent, motif) pair). A caption is a list of keyword blocks; the composition
rule is: background palette from the FIRST block; motifs (each in its own accent colour) from every
later block, up to MOTIF_BLOCKS distinct genres; a one-block caption takes its motif from its only
block. A movie's own poster is drawn from its first POSTER_BLOCKS genres, so a history poster shows
two of its genres' motifs. A PMG prompt is the target's block followed by the user's preference
blocks, best first, so its poster takes the target's palette and the user's two favourite motifs.
(Until 2026-11-28 only the SECOND block gave a motif and a movie's poster used two genres: a perfect
generator then raised d_p in 57 % of evaluation pairs, since the preferred genres were seldom a
history poster's motif. Until 2026-11-26 the motif came from the LAST block: with a causal text
encoder a second block's token states cannot tell whether a third follows.) Each movie
also owns a title band (colour and position, keyed by movie id) that belongs to the target alone:
preference blocks never change it, so a personalized poster can keep its target's identity (d_t)
while it takes on the user's taste (d_p).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Sequence

MOTIFS = ("circles", "stripes", "triangles", "stars", "grid", "diagonal")
ACCENTS = {  # accent word → RGB
    "black": (12, 12, 12),
    "white": (245, 245, 245),
    "red": (222, 30, 30),
    "yellow": (250, 215, 0),
    "blue": (30, 60, 225),
    "orange": (250, 140, 0),
}


@dataclass(frozen=True)
class GenreStyle:
    genre: str                     # exact MovieLens token, e.g. "Sci-Fi"
    background: str                # background colour word
    background_rgb: tuple          # (r, g, b) before the random brightness gradient
    accent: str                    # accent colour word, a key of ACCENTS
    motif: str                     # one of MOTIFS

    @property
    def accent_rgb(self) -> tuple:
        return ACCENTS[self.accent]

    def block(self) -> list[str]:
        """The keyword block `[genre, background, accent, motif]`, all lowercase."""
        return [self.genre.lower(), self.background, self.accent, self.motif]


_TABLE = [  # genre, background word, RGB, accent, motif
    ("Action", "orange", (238, 118, 22), "black", "diagonal"),
    ("Adventure", "green", (34, 139, 52), "yellow", "triangles"),
    ("Animation", "skyblue", (110, 180, 235), "white", "circles"),
    ("Children", "lime", (150, 200, 60), "red", "stars"),
    ("Comedy", "yellow", (245, 225, 45), "blue", "circles"),
    ("Crime", "grey", (118, 118, 118), "red", "stripes"),
    ("Documentary", "beige", (235, 215, 170), "black", "grid"),
    ("Drama", "navy", (25, 35, 110), "white", "stripes"),
    ("Fantasy", "purple", (130, 50, 180), "yellow", "stars"),
    ("Film-Noir", "black", (16, 16, 16), "white", "diagonal"),
    ("Horror", "darkred", (122, 0, 0), "black", "triangles"),
    ("Musical", "magenta", (220, 30, 170), "white", "stars"),
    ("Mystery", "teal", (0, 112, 112), "yellow", "grid"),
    ("Romance", "pink", (245, 170, 200), "red", "circles"),
    ("Sci-Fi", "cyan", (0, 200, 220), "blue", "grid"),
    ("Thriller", "slate", (80, 95, 130), "orange", "diagonal"),
    ("War", "olive", (104, 112, 40), "black", "stripes"),
    ("Western", "brown", (150, 90, 40), "orange", "triangles"),
]
STYLES = {g: GenreStyle(g, bg, rgb, acc, motif) for g, bg, rgb, acc, motif in _TABLE}
GENRES = tuple(STYLES)            # table order = class index of the classifier's background head
ACCENT_NAMES = tuple(ACCENTS)     # class order of the accent head
# Movies whose genres are all outside the table (IMAX only, "(no genres listed)") get Drama's style:
# the most frequent MovieLens genre, so such posters look like the bulk of the catalogue.
FALLBACK_GENRE = "Drama"
MOTIF_BLOCKS = 2     # distinct later blocks that each add their motif to a poster
POSTER_BLOCKS = 3    # genres a movie's own poster is drawn from (palette + MOTIF_BLOCKS motifs)
KEYWORD_BLOCKS = 2   # genre blocks of a movie's world keywords in a history prompt (what the tiny Llama reads)
_BY_KEYWORD = {g.lower(): g for g in GENRES}

BAND_COLOURS = {  # title-band colour word → (band RGB, "text" RGB)
    "charcoal": ((40, 40, 48), (235, 235, 225)),
    "ivory": ((250, 245, 225), (40, 40, 48)),
    "gold": ((212, 168, 40), (40, 40, 48)),
}
BAND_POSITIONS = ("top", "bottom")


@dataclass(frozen=True)
class MovieAttribute:
    """The target-only title band: its colour and whether it sits at the top or the bottom."""
    colour: str
    position: str

    @property
    def rgb(self) -> tuple:
        return BAND_COLOURS[self.colour][0]

    @property
    def text_rgb(self) -> tuple:
        return BAND_COLOURS[self.colour][1]

    @property
    def index(self) -> int:
        """Class index for the classifier's band head (len(ATTRIBUTES) means "no band")."""
        return ATTRIBUTES.index(self)

    def keywords(self) -> list[str]:
        return [f"{self.colour} band", f"{self.position} band"]


ATTRIBUTES = tuple(MovieAttribute(c, p) for c in BAND_COLOURS for p in BAND_POSITIONS)


def movie_attribute(movie_id: int) -> MovieAttribute:
    """The title band of a movie: a stable hash of its id (the same on every machine and run)."""
    digest = hashlib.blake2b(str(int(movie_id)).encode(), digest_size=8).digest()
    return ATTRIBUTES[int.from_bytes(digest, "little") % len(ATTRIBUTES)]


def genre_of(block) -> str:
    """The MovieLens genre of a block given as a genre token ("Sci-Fi") or a keyword list (["sci-fi", ...])."""
    key = block if isinstance(block, str) else (block[0] if len(block) else "")
    genre = key if key in STYLES else _BY_KEYWORD.get(str(key).lower())
    if genre is None:
        raise ValueError(f"{key!r} is not a genre of the poster world; choose one of {list(GENRES)}")
    return genre


def known_genres(genres: Iterable[str]) -> list[str]:
    """The movie's genres that have a style, in order, without duplicates (IMAX etc. dropped)."""
    out = []
    for g in genres:
        if g in STYLES and g not in out:
            out.append(g)
    return out


def poster_genres(genres: Iterable[str], max_blocks: int = POSTER_BLOCKS) -> list[str]:
    """The genres a movie's own poster is drawn from: its first `max_blocks` known ones, else the fallback."""
    return known_genres(genres)[:max_blocks] or [FALLBACK_GENRE]


def genre_by_style(keywords: Iterable[str]) -> str | None:
    """The genre whose background, accent and motif words a genre-less keyword list names best.

    For captions that carry a genre's style words without the genre itself (a language model's
    "black, olive, stripes" is War's block): the genre sharing the most of its three style words
    with the list, if it shares at least two and no other genre shares as many; else None.
    """
    words = {k.strip().lower() for k in keywords}
    score = {g: len(words & {s.background, s.accent, s.motif}) for g, s in STYLES.items()}
    best = max(score.values())
    winners = [g for g, n in score.items() if n == best]
    return winners[0] if best >= 2 and len(winners) == 1 else None


def block(genre: str) -> list[str]:
    """The keyword block of one genre, e.g. `["horror", "darkred", "black", "triangles"]`."""
    return STYLES[genre_of(genre)].block()


def caption(genres: Sequence, attribute: MovieAttribute | None = None) -> str:
    """`"movie poster, " + block(g1) [+ block(g2) ...] [+ band keywords]`, comma-separated."""
    words = ["movie poster"] + [k for g in genres for k in block(g)]
    if attribute is not None:
        words += attribute.keywords()
    return ", ".join(words)


def target_block(movie_id: int, genres: Iterable[str]) -> list[str]:
    """A movie's keywords in a history prompt: its first KEYWORD_BLOCKS genres' blocks, then its title band.

    Two blocks, not POSTER_BLOCKS: the tiny Llama was trained on prompts of this shape, and its
    answer (the user's most frequent genres) does not depend on how many motifs a poster draws.
    """
    return [k for g in poster_genres(genres, KEYWORD_BLOCKS) for k in block(g)] + movie_attribute(movie_id).keywords()


def motif_genres(blocks: Sequence) -> list[str]:
    """The genres whose motifs a poster draws: the distinct genres of the blocks after the first, in
    order, at most MOTIF_BLOCKS of them; a one-block caption's own genre."""
    out = []
    for b in blocks[1:]:
        g = genre_of(b)
        if g not in out:
            out.append(g)
    return out[:MOTIF_BLOCKS] or [genre_of(blocks[0])]


def motif_set(blocks: Sequence) -> set[int]:
    """Motif class indices a poster of these blocks shows (one or MOTIF_BLOCKS of them)."""
    return {MOTIFS.index(STYLES[g].motif) for g in motif_genres(blocks)}


def accent_set(blocks: Sequence) -> set[int]:
    """Accent class indices a poster of these blocks shows (its motifs' colours)."""
    return {ACCENT_NAMES.index(STYLES[g].accent) for g in motif_genres(blocks)}


def labels(blocks: Sequence, attribute: MovieAttribute | None) -> dict[str, int]:
    """Class indices the composition rule implies: bg from the first block, motif/accent from the first
    motif genre (the second block, or the only one)."""
    first, last = STYLES[genre_of(blocks[0])], STYLES[motif_genres(blocks)[0]]
    return {
        "bg": GENRES.index(first.genre),
        "motif": MOTIFS.index(last.motif),
        "accent": ACCENT_NAMES.index(last.accent),
        "band": attribute.index if attribute is not None else len(ATTRIBUTES),
    }


HEADS = {"bg": len(GENRES), "motif": len(MOTIFS), "accent": len(ACCENT_NAMES), "band": len(ATTRIBUTES) + 1}


def vocabulary() -> list[str]:
    """Every word a world caption can contain, sorted (for word-level tokenizers)."""
    words = {"movie", "poster", "band"} | set(BAND_COLOURS) | set(BAND_POSITIONS)
    for style in STYLES.values():
        words.update(style.block())
    return sorted(words)


def parse(keywords: Iterable[str]) -> tuple[list[str], MovieAttribute | None]:
    """Read a keyword list (e.g. target_block(...) + preference blocks) back into (genres, title band).

    Genre keywords open blocks in order; colour/motif words and unknown keywords are ignored, so
    the composition rule applies to whatever genres appear. The band needs both its colour and
    position keywords, else it is None.
    """
    genres, colour, position = [], None, None
    for kw in keywords:
        kw = kw.strip().lower()
        if kw in _BY_KEYWORD:
            genres.append(_BY_KEYWORD[kw])
        elif kw.endswith(" band") and kw[:-5] in BAND_COLOURS:
            colour = kw[:-5]
        elif kw.endswith(" band") and kw[:-5] in BAND_POSITIONS:
            position = kw[:-5]
    return genres, (MovieAttribute(colour, position) if colour and position else None)
