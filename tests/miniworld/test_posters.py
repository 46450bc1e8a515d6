"""The poster world: genre table, composition rule, target-only title band, deterministic renders."""
import numpy as np
import pytest

from tasks.miniworld import posters, world


def _near(pixels, rgb, tol=40.0):
    """Fraction of pixels within `tol` (Euclidean RGB) of `rgb`."""
    d = np.linalg.norm(pixels.reshape(-1, 3).astype(np.float32) - np.asarray(rgb, np.float32), axis=1)
    return float((d < tol).mean())


def test_table_covers_the_18_movielens_genres_with_distinct_styles():
    assert len(world.GENRES) == 18 and "IMAX" not in world.GENRES
    assert {"Sci-Fi", "Film-Noir", "Children"} <= set(world.GENRES)
    assert len({(s.accent, s.motif) for s in world.STYLES.values()}) == 18
    assert len({s.background for s in world.STYLES.values()}) == 18
    assert all(s.motif in world.MOTIFS and s.accent in world.ACCENTS for s in world.STYLES.values())
    assert world.block("Horror") == ["horror", "darkred", "black", "triangles"]
    assert world.caption(["Comedy", "Horror"]) == (
        "movie poster, comedy, yellow, blue, circles, horror, darkred, black, triangles")


def test_fallback_for_genres_outside_the_table():
    assert world.poster_genres(["IMAX"]) == [world.FALLBACK_GENRE]
    assert world.poster_genres(["(no genres listed)"]) == [world.FALLBACK_GENRE]
    assert world.poster_genres(["IMAX", "Comedy", "Drama", "War", "Horror"]) == ["Comedy", "Drama", "War"]
    # a movie's keywords in a history prompt keep two blocks (what the tiny Llama reads)
    assert world.target_block(1, ["Comedy", "Drama", "War"])[:8] == world.block("Comedy") + world.block("Drama")
    assert len(world.target_block(1, ["Comedy", "Drama", "War"])) == 10
    with pytest.raises(ValueError, match="not a genre"):
        world.genre_of("IMAX")


def test_render_is_deterministic_per_seed():
    a = posters.render(["Comedy", "Horror"], world.movie_attribute(5), seed=11, size=32)
    b = posters.render(["Comedy", "Horror"], world.movie_attribute(5), seed=11, size=32)
    c = posters.render(["Comedy", "Horror"], world.movie_attribute(5), seed=12, size=32)
    assert a.dtype == np.uint8 and a.shape == (32, 32, 3)
    assert posters.encode_png(a) == posters.encode_png(b)
    assert not np.array_equal(a, c)
    assert posters.render(["Comedy"], None, 3, size=64).shape == (64, 64, 3)


@pytest.mark.parametrize("first,last", [("Comedy", "Horror"), ("Horror", "Comedy"), ("Sci-Fi", "Western")])
def test_composition_palette_from_first_block_motif_and_accent_from_last(first, last):
    bg, acc = world.STYLES[first], world.STYLES[last]
    for seed in range(4):
        img = posters.render([first, last], None, seed, size=32)
        # The background is the most common colour: its median lies within the gradient range of the first block.
        lo = np.asarray(bg.background_rgb) * 0.8 - 15
        hi = np.minimum(np.asarray(bg.background_rgb) * 1.15, 255) + 15
        median = np.median(img.reshape(-1, 3), axis=0)
        assert np.all(median >= lo) and np.all(median <= hi), (first, last, seed, median)
        assert _near(img, acc.accent_rgb) > 0.02          # the last block's accent is drawn
        assert _near(img, bg.accent_rgb) < 0.01           # the first block's accent is not
    keyword_form = posters.render([world.block(first), world.block(last)], None, 0, 32)
    assert np.array_equal(keyword_form, posters.render([first, last], None, 0, 32))
    assert world.labels([first, last], None) == {
        "bg": world.GENRES.index(first), "motif": world.MOTIFS.index(acc.motif),
        "accent": world.ACCENT_NAMES.index(acc.accent), "band": len(world.ATTRIBUTES)}


def test_target_only_band_survives_a_preference_block():
    movie_id = 42
    attr = world.movie_attribute(movie_id)
    assert world.movie_attribute(movie_id) == attr                       # stable per id
    assert len({world.movie_attribute(i) for i in range(60)}) == len(world.ATTRIBUTES)
    keywords = world.target_block(movie_id, ["Drama", "IMAX"]) + world.block("Fantasy")
    assert keywords[:4] == world.block("Drama") and attr.keywords()[0] in keywords
    genres, parsed = world.parse(keywords)
    assert genres == ["Drama", "Fantasy"] and parsed == attr
    assert world.labels(genres, parsed)["band"] == attr.index
    for pref in ("Fantasy", "Horror", "Film-Noir"):
        img = posters.render(["Drama", pref], attr, seed=1, size=32)
        top, bottom = img[:12], img[-12:]
        inside, outside = (top, bottom) if attr.position == "top" else (bottom, top)
        assert _near(inside, attr.rgb, 30) > 0.15
        assert _near(outside, attr.rgb, 30) < 0.05


def test_render_movie_posters_writes_atomically_and_skips_identical(tmp_path):
    movies = [(1, ["Comedy", "Romance"]), (2, ["IMAX"]), (3, ["(no genres listed)"]), (10, ["Sci-Fi"])]
    assert posters.render_movie_posters(movies, tmp_path, size=32, seed=0) == 4
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["1.png", "10.png", "2.png", "3.png"]
    before = (tmp_path / "1.png").read_bytes()
    assert posters.render_movie_posters(movies, tmp_path, size=32, seed=0) == 0
    assert (tmp_path / "1.png").read_bytes() == before
    (tmp_path / "10.png").write_bytes(b"stale")
    assert posters.render_movie_posters(movies, tmp_path, size=32, seed=0) == 1
    assert posters.render_movie_posters(movies[:1], tmp_path, size=32, seed=1) == 1   # another seed, another poster
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_sample_dataset_labels_match_the_rule():
    data = posters.sample_dataset(40, seed=3)
    assert data.images.shape == (40, 32, 32, 3)
    assert set(data.labels) == set(world.HEADS)
    for i in range(40):
        assert world.labels(data.blocks[i], data.attributes[i]) == {h: int(v[i]) for h, v in data.labels.items()}
    assert data.captions()[0].startswith("movie poster, ")
    assert set(" ".join(data.captions()).replace(",", " ").split()) <= set(world.vocabulary())
    again = posters.sample_dataset(40, seed=3)
    assert np.array_equal(again.images, data.images)


def _strip_colours(img, style):
    """Share of `style`'s accent colour in the upper and the lower half of a poster."""
    half = img.shape[0] // 2
    return _near(img[:half], style.accent_rgb), _near(img[half:], style.accent_rgb)


def test_three_block_captions_take_the_first_palette_and_both_later_motifs():
    data = posters.sample_dataset(60, seed=4, three_genre_p=0.5)
    sizes = {len(b) for b in data.blocks}
    assert sizes == {1, 2, 3}
    triples = [(b, a, i) for i, (b, a) in enumerate(zip(data.blocks, data.attributes)) if len(b) == 3]
    for blocks, attr, i in triples:
        assert len(set(blocks)) == 3
        lab = world.labels(blocks, attr)
        assert lab["bg"] == world.GENRES.index(blocks[0])
        assert lab["motif"] == world.MOTIFS.index(world.STYLES[blocks[1]].motif)
        assert lab["accent"] == world.ACCENT_NAMES.index(world.STYLES[blocks[1]].accent)
        assert world.motif_genres(blocks) == list(blocks[1:])
        assert world.motif_set(blocks) == {world.MOTIFS.index(world.STYLES[g].motif) for g in blocks[1:]}
        assert int(data.labels["bg"][i]) == lab["bg"] and int(data.labels["motif"][i]) == lab["motif"]
        # the third block is visible: not the poster of the first two blocks alone
        assert not np.array_equal(posters.render(blocks, attr, 100 + i), posters.render(blocks[:2], attr, 100 + i))
    # without triples the draws are those of before triples existed (the CLIP and classifier data)
    assert {len(b) for b in posters.sample_dataset(60, seed=4).blocks} == {1, 2}


@pytest.mark.parametrize("blocks", [("Comedy", "Horror", "Sci-Fi"), ("Drama", "Western", "Musical")])
def test_two_motifs_sit_in_their_own_strips(blocks):
    """Second block's accent in the upper strip, third block's in the lower one (no band, 128 px)."""
    second, third = world.STYLES[blocks[1]], world.STYLES[blocks[2]]
    for seed in range(3):
        img = posters.render(blocks, None, seed, size=128)
        up2, low2 = _strip_colours(img, second)
        up3, low3 = _strip_colours(img, third)
        assert up2 > 0.03 and low3 > 0.03, (blocks, seed, up2, low3)
        assert low2 < 0.01 and up3 < 0.01, (blocks, seed, low2, up3)
    # a fourth block adds nothing (MOTIF_BLOCKS = 2), nor does a block repeating a motif genre
    assert world.MOTIF_BLOCKS == 2
    assert np.array_equal(posters.render(blocks + ("War",), None, 5), posters.render(blocks, None, 5))
    assert np.array_equal(posters.render(blocks[:2] + blocks[1:], None, 5), posters.render(blocks, None, 5))


def test_a_repeated_first_block_adds_its_motif_to_the_next_ones():
    """A A / A A B: a PMG prompt whose first preference is the target's genre: A's palette and A's
    motif (A A is A's own poster), then B's motif beside it."""
    data = posters.sample_dataset(80, seed=5, three_genre_p=0.3, repeat_first_p=0.5)
    repeats = [(i, b) for i, b in enumerate(data.blocks) if len(b) > 1 and b[0] == b[1]]
    assert repeats and {len(b) for _, b in repeats} == {2, 3}
    for i, blocks in repeats:
        attr = data.attributes[i]
        assert world.labels(blocks, attr) == world.labels(blocks[:1], attr)
        assert int(data.labels["motif"][i]) == world.MOTIFS.index(world.STYLES[blocks[0]].motif)
        if len(blocks) == 2:
            assert np.array_equal(posters.render(blocks, attr, 7), posters.render(blocks[:1], attr, 7))
        else:
            assert world.motif_genres(blocks) == [blocks[0], blocks[2]]
    assert posters.sample_dataset(60, seed=4, three_genre_p=0.5).blocks == \
        posters.sample_dataset(60, seed=4, three_genre_p=0.5, repeat_first_p=0.0).blocks


def test_genre_by_style_reads_a_block_without_its_genre_word():
    assert world.genre_by_style(["black", "olive", "stripes"]) == "War"
    assert world.genre_by_style([" Navy", "white "]) == "Drama"         # two of three style words suffice
    for g in world.GENRES:                                              # every block is recognisable
        assert world.genre_by_style(world.block(g)[1:]) == g
    assert world.genre_by_style(["black", "triangles", "stripes"]) is None  # Horror or War: ambiguous
    assert world.genre_by_style(["red"]) is None and world.genre_by_style(["storm"]) is None
