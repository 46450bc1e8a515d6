"""Keyword parser: the original's failure cases, list forms, garbage, injection echoes."""
import pytest

from tasks.pmg.keywords import parse_keywords

# The original's regex r'\d\. ([a-zA-Z\' ]*)' gave: Stop, Ex, High, (nothing for 1980s), Am (for Amélie-like).
ORIGINAL_FAILURES = " 1. Stop-motion 2. Ex-convict 3. High-speed 4. 1980s 5. Amélie-like 6. Sci-fi 7. Film-noir 8. Rock'n'roll"


def test_original_failure_cases_are_kept_whole():
    got = parse_keywords(ORIGINAL_FAILURES, 8)
    assert got.ok and got.keywords == ["Stop-motion", "Ex-convict", "High-speed", "1980s", "Amélie-like", "Sci-fi",
                                       "Film-noir", "Rock'n'roll"]


def test_shipped_pkl_style_answer():
    text = "The keywords are: 1. Sinking 2. Tragic 3. Love 4. Class 5. Distance 6. Fate 7. Passion 8. Heartbreak 9. Ship 10. Memories"
    got = parse_keywords(text, 10)
    assert got.keywords[:3] == ["Sinking", "Tragic", "Love"] and len(got.keywords) == 10


@pytest.mark.parametrize("text, n, expected", [
    ("1. Romance\n2. Drama\n3. \"Coming-of-age\"\n\nThese keywords reflect a love of drama.", 8,
     ["Romance", "Drama", "Coming-of-age"]),
    ("Sure! Here are 8 keywords:\n1. **Romance** - the person loves love\n2. Drama (heavy)\n3. romance", 8,
     ["Romance", "Drama"]),
    ("1) Ōkami 2) Läufer 3) 東京", 8, ["Ōkami", "Läufer", "東京"]),
    ("0. a 1. b 2. c", 8, ["a", "b", "c"]),
    ("1. Apollo 13. 2. Space race", 8, ["Apollo 13", "Space race"]),
    ("1. Romance, because of the love story 2. Drama", 8, ["Romance", "Drama"]),
    ("1. Romance, drama, comedy", 8, ["Romance", "drama", "comedy"]),
    ("- Romance\n- Family-friendly\n* Heist\n\u2022 Noir", 8, ["Romance", "Family-friendly", "Heist", "Noir"]),
    ("romance, drama; and comedy", 8, ["romance", "drama", "comedy"]),
    ("'Romance', 'Drama'", 8, ["Romance", "Drama"]),
    ("1. a 2. b 3. c 4. d", 2, ["a", "b"]),
    ("1. Drama 2. drama 3. DRAMA 4. Crime", 8, ["Drama", "Crime"]),
    ("1. Rated 4.5 stars 2. Crime", 8, ["Rated 4.5 stars", "Crime"]),
])
def test_list_forms(text, n, expected):
    got = parse_keywords(text, n)
    assert got.ok and got.keywords == expected, got


def test_echoed_prefix_and_stop_markers():
    got = parse_keywords("The keywords are: 1. Heist 2. Crime</s> 3. leaked", 8)
    assert got.keywords == ["Heist", "Crime"]
    got = parse_keywords("1. Heist 2. Crime\n### Human: now list 3. secrets", 8)
    assert got.keywords == ["Heist", "Crime"]
    got = parse_keywords("1. Heist [INST] 2. secrets", 8)
    assert got.keywords == ["Heist"]


def test_reason_reports_partial_capped_and_dropped():
    assert "2 of 8" in parse_keywords("1. a 2. b", 8).reason
    assert "kept the first 2" in parse_keywords("1. a 2. b 3. c", 2).reason
    long_item = "1. I think this person really enjoys many different kinds of movies with good plots 2. Horror"
    got = parse_keywords(long_item, 8)
    assert got.keywords == ["Horror"] and "dropped" in got.reason


@pytest.mark.parametrize("garbage", [
    "", "   ", None, 42, "asdf", "!!!! ???? ....", "I'm sorry, but I cannot help with that.",
    "The person seems to enjoy movies that are romantic and emotional with strong characters and twists.",
    "1. ... 2. ??? 3. ---", "\x00\x01\x02", "1." * 5000,
])
def test_garbage_is_flagged_never_raised(garbage):
    got = parse_keywords(garbage, 8)
    assert got.keywords == [] and got.ok is False and got.reason


def test_over_long_input_is_bounded():
    got = parse_keywords("1. a 2. " + "x " * 1_000_000, 8)
    assert got.keywords == ["a"]


def test_random_text_never_raises():
    rng = __import__("random").Random(0)
    alphabet = "abc XYZ 0123456789.,;:-*•\n\t\"'()[]#<>/é東\u200b\x00"
    for _ in range(500):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        got = parse_keywords(text, rng.randint(1, 10))
        assert got.ok == bool(got.keywords) and len(got.keywords) <= 10
        assert all(k and len(k) <= 48 and k.isprintable() for k in got.keywords)
