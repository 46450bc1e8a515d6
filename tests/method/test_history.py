"""History selection, the original's item serialization, fingerprints."""
from datetime import datetime, timezone

from tasks.pmg.history import fit_items, history_fingerprint, select_history, serialize_items, strip_year

ROWS = [
    dict(movie_id=1, title="Toy Story (1995)", genres=["Adventure", "Animation"], rating=4.0, rated_at=300),
    dict(movie_id=2, title="Heat (1995)", genres="Action|Crime", rating=5.0, rated_at=100),
    dict(movie_id=3, title="Se7en (1995)", genres=["Thriller"], rating=5.0, rated_at=200),
    dict(movie_id=4, title="Bad (2000)", genres=["Drama"], rating=3.5, rated_at=999),
    dict(movie_id=5, title="Old (1950)", genres=["Drama"], rating=4.0, rated_at=50),
    dict(movie_id=6, title="Tie (2001)", genres=["Drama"], rating=4.0, rated_at=50),
]


def test_select_orders_by_rating_then_recency_and_filters_liked():
    got = [it.movie_id for it in select_history(ROWS, n=10)]
    assert got == [3, 2, 1, 5, 6]  # 5/6 tie on rating and time: lower movie id first; 4 is not liked
    assert [it.movie_id for it in select_history(ROWS, n=2)] == [3, 2]
    assert 4 in [it.movie_id for it in select_history(ROWS, n=10, min_rating=None)]


def test_select_accepts_tuples_and_datetimes():
    rows = [(1, "A", "Drama", 4.5, datetime(2020, 1, 1)), (2, "B", "Drama", 4.5, datetime(2021, 1, 1))]
    assert [it.movie_id for it in select_history(rows)] == [2, 1]


def test_strip_year():
    assert strip_year("Toy Story (1995)") == "Toy Story"
    assert strip_year("Babylon 5 (1994-1998) ") == "Babylon 5"
    assert strip_year("Matrix, The (1999)") == "Matrix, The"
    assert strip_year("Hyena Road") == "Hyena Road"
    assert strip_year("(500) Days of Summer (2009)") == "(500) Days of Summer"
    assert strip_year("1984 (1984)") == "1984"


def test_serialize_items_original_format():
    items = select_history(ROWS, n=2)
    kw = {3: ["serial killer", "rain", "dark", "detectives", "sins", "box"], 2: ["heist"]}
    assert serialize_items(items, kw) == (
        "0. Se7en(Thriller): serial killer, rain, dark, detectives, sins. 1. Heat(Action|Crime): heist.")


def test_serialize_items_without_keywords_and_caps():
    long_title = "T" * 200 + " (1999)"
    text = serialize_items([(9, long_title, [], 5.0, 0)], {9: ["k" * 100, "a,b"]}, n_keywords=5)
    assert text == "0. " + "T" * 80 + "(): " + "k" * 40 + ", a b."
    assert serialize_items([(9, "X", ["Drama"], 5.0, 0)]) == "0. X(Drama)."


def test_fingerprint_is_stable_and_sensitive():
    items = select_history(ROWS)
    fp = history_fingerprint(items)
    assert fp == history_fingerprint(list(items)) and len(fp) == 64
    assert fp != history_fingerprint(items, n=3)
    assert fp != history_fingerprint(items, version="pmg-llama2-chat-1")
    assert fp != history_fingerprint(list(reversed(items)))
    changed = [dict(r, rating=4.5) if r["movie_id"] == 1 else r for r in ROWS]
    assert fp != history_fingerprint(select_history(changed))
    # A timestamp as epoch seconds or as the equivalent naive UTC datetime gives the same fingerprint.
    as_dt = [dict(r, rated_at=datetime.fromtimestamp(r["rated_at"], timezone.utc).replace(tzinfo=None)) for r in ROWS]
    assert fp == history_fingerprint(select_history(as_dt))


def test_fingerprint_golden():
    # Pinned: a change here invalidates every cached keyword row, so it must be deliberate.
    items = [(1, "A", "Drama", 5.0, 0), (2, "B", "Drama", 4.0, 60)]
    assert history_fingerprint(items) == GOLDEN_FP


GOLDEN_FP = "775a39e20479e32d7b5e3e45ab41c7c1808085d2deaae3ff4da4538fb89b9355"


def test_fit_items_drops_least_liked_items_until_the_prompt_fits():
    items = select_history(ROWS, n=10)          # best first: 3, 2, 1, 5, 6
    kw = {m: ["keyword"] * 5 for m in range(1, 7)}

    def prompt_of(text):
        return "Summarize: " + text

    def n_words(text):
        return len(text.split())

    full = n_words(prompt_of(serialize_items(items, kw)))
    kept, text = fit_items(items, kw, prompt_of, n_words, budget=full)
    assert [it.movie_id for it in kept] == [3, 2, 1, 5, 6] and text == serialize_items(items, kw)
    kept, text = fit_items(items, kw, prompt_of, n_words, budget=full - 1)
    assert [it.movie_id for it in kept] == [3, 2, 1, 5]            # the least-liked item went first
    assert text == serialize_items(items[:4], kw) and n_words(prompt_of(text)) <= full - 1
    kept, text = fit_items(items, kw, prompt_of, n_words, budget=1)  # nothing fits: the best item stays
    assert [it.movie_id for it in kept] == [3]
    assert fit_items([], kw, prompt_of, n_words, budget=1) == ([], "")
