"""Pure parts of the evaluation: job planning, α scoring and selection, summary, and the LLM keyword fill-in."""
import math

import numpy as np
import pytest

from tasks import evaluation as E


def _pair(u, m, prefs=("dark", "noir")):
    hist = [{"movie_id": 10 + u, "title": "Heat (1995)", "genres": ["Crime"], "rating": 5.0, "rated_at": None}]
    return E.Pair(u, m, f"Movie {m}", ["Drama"], hist, "fp", list(prefs) if prefs is not None else None)


def test_plan_jobs_variants_seeds_and_prompts():
    pairs = [_pair(1, 7), _pair(2, 8)]
    jobs = E.plan_jobs(pairs, {7: ["storm"], 8: ["city"]}, E.VARIANTS, k=2, base_seed=0)
    assert len(jobs) == 4 * 2 * 2
    by = {(j.variant, j.pair, j.candidate): j for j in jobs}
    # Keyword variants: the original's grid (w 1 and 2, one seed); the others: two seed slots.
    assert [by[("keywords", 0, c)].w for c in (0, 1)] == [1.0, 2.0]
    assert by[("keywords", 0, 0)].seed == by[("keywords", 0, 1)].seed == by[("baseline", 0, 0)].seed
    assert by[("baseline", 0, 0)].seed != by[("baseline", 0, 1)].seed
    assert "noir" not in "".join(t for t, _ in by[("baseline", 0, 0)].segments)
    assert "noir" not in "".join(t for t, _ in by[("soft", 0, 0)].segments)
    assert "noir" in "".join(t for t, _ in by[("pmg", 0, 0)].segments)
    assert [j.soft for j in jobs if j.pair == 0 and j.candidate == 0] == [False, True, False, True]


def test_plan_jobs_with_one_preference_weight_varies_the_seed():
    """A `[method] weights = [1.0]` config: the keyword variants' K candidates differ by seed, all at w = 1."""
    jobs = E.plan_jobs([_pair(1, 7)], {7: ["storm"]}, E.VARIANTS, k=2, base_seed=0, weights=(1.0,))
    pmg = [j for j in jobs if j.variant == "pmg"]
    assert [j.w for j in pmg] == [1.0, 1.0] and pmg[0].seed != pmg[1].seed
    base = [j for j in jobs if j.variant == "baseline"]
    assert [j.seed for j in pmg] == [j.seed for j in base]  # same seed slots: pairs differ only by the prompt


def test_summary_compares_each_part_of_the_blend():
    """A higher text d_p with a non-positive image d_p: the blend loses (the floor), the text part wins."""
    base = [{"variant": v, "user_id": 1, "target_movie_id": 7, "candidate": 0, "d_p_text": pt, "d_t_text": 40.0,
             "d_p_image": pi, "d_t_image": ti, "ssim_target": 0.5, "ssim_history": 0.5}
            for v, pt, pi, ti in (("baseline", 20.0, 50.0, 60.0), ("pmg", 30.0, -1.0, 45.0))]
    pmg = {r["variant"]: r for r in E.summarize(E.score_rows(base, [0.5]), 0.5, ["baseline", "pmg"])}["pmg"]
    assert pmg["win_rate_d_p"] == 0.0 and pmg["win_rate_d_p_text"] == 1.0 and pmg["win_rate_d_p_image"] == 0.0
    assert pmg["rel_change_d_t_text"] == 0.0 and pmg["rel_change_d_t_image"] == pytest.approx(45 / 60 - 1)


def test_taste_overlap_is_the_share_of_target_keywords_among_the_preferences():
    target = ["Drama", "navy", "white", "stripes"]
    assert E.taste_overlap(target, ["drama", "Navy", "white", "stripes", "crime", "grey"]) == 1.0
    assert E.taste_overlap(target, ["comedy", "yellow", "white", "circles"]) == 0.25
    assert E.taste_overlap(target, None) == 0.0
    assert math.isnan(E.taste_overlap([], ["drama"])) and math.isnan(E.taste_overlap(None, ["drama"]))
    # The pair's target keywords are those its prompt carries (the first N_TARGET_KEYWORDS).
    pair = _pair(1, 7, prefs=["storm", "city"])
    assert E.pair_taste_overlap(pair, {7: ["storm", "a", "b", "c", "d", "city"]}) == 0.2


def test_taste_columns_split_the_comparison_by_the_users_taste(tmp_path):
    """PMG loses on the pair already in the user's taste and wins outside it; a pair without keywords is in neither."""
    from flows.evaluate import headline, taste_table, write_markdown

    base = [{"variant": v, "user_id": u, "target_movie_id": 7, "candidate": 0, "d_p_text": dp, "d_t_text": 40.0,
             "d_p_image": None, "d_t_image": None, "ssim_target": 0.5, "ssim_history": 0.5}
            for u, dps in ((1, (30.0, 20.0)), (2, (10.0, 25.0)), (3, (10.0, 25.0)))
            for v, dp in zip(("baseline", "pmg"), dps)]
    rows = E.score_rows(base, [0.5])
    taste = E.taste_columns(rows, 0.5, ["baseline", "pmg"], {(1, 7): 1.0, (2, 7): 0.25, (3, 7): math.nan})
    pmg = taste["pmg"]
    assert (pmg["pairs_in_taste"], pmg["win_rate_d_p_in_taste"]) == (1, 0.0)
    assert (pmg["pairs_outside_taste"], pmg["win_rate_d_p_outside_taste"]) == (1, 1.0)
    assert math.isnan(taste["baseline"]["win_rate_d_p_in_taste"])

    summary = E.summarize(rows, 0.5, ["baseline", "pmg"])
    assert taste_table({r["variant"]: r for r in summary}) == []  # no split computed, no table
    for r in summary:
        r.update(taste[r["variant"]])
    md = write_markdown(tmp_path / "summary.md", "r", summary, ["baseline", "pmg"], {}, [],
                        {"pairs": 3, "candidates": 1, "alpha": 0.5}).read_text()
    line = next(x for x in md.split("pairs in taste")[1].splitlines() if x.startswith(f"| {E.TITLES['pmg']} |"))
    assert line == f"| {E.TITLES['pmg']} | 1 | 0% | +0.0% | 1 | 100% | +0.0% |"
    assert headline(summary) == [f"{E.TITLES['pmg']}: d_p > baseline in 67 % of pairs, Δ d_t +0.0% "
                                 "(in the user's taste: 0 % of 1; outside: 100 % of 1)"]


def test_candidate_counts_double_up_to_k():
    assert E.candidate_counts(1) == [1]
    assert E.candidate_counts(4) == [1, 2, 4]
    assert E.candidate_counts(6) == [1, 2, 4, 6]
    with pytest.raises(ValueError, match="at least 1"):
        E.candidate_counts(0)


def test_candidate_sweep_keeps_the_first_n_candidates(tmp_path):
    """PMG's second candidate is the one that beats the baseline: with one candidate PMG loses, with two it wins."""
    from flows.evaluate import candidates_table, write_markdown

    base = [{"variant": v, "user_id": 1, "target_movie_id": 7, "candidate": c, "d_p_text": dp, "d_t_text": 40.0,
             "d_p_image": None, "d_t_image": None, "ssim_target": 0.5, "ssim_history": 0.5}
            for v, dps in (("baseline", (20.0, 10.0)), ("pmg", (15.0, 30.0))) for c, dp in enumerate(dps)]
    sweep = E.candidate_sweep(base, 0.5, ["baseline", "pmg"])
    pmg = {r["candidates"]: r for r in sweep if r["variant"] == "pmg"}
    assert sorted(pmg) == [1, 2]
    assert (pmg[1]["win_rate_d_p"], pmg[1]["mean_d_p"]) == (0.0, 15.0)
    assert (pmg[2]["win_rate_d_p"], pmg[2]["mean_d_p"]) == (1.0, 30.0)
    # n = K is the run's own summary.
    full = {r["variant"]: r for r in E.summarize(E.score_rows(base, [0.5]), 0.5, ["baseline", "pmg"])}["pmg"]
    assert pmg[2]["win_rate_d_p"] == full["win_rate_d_p"] and pmg[2]["rel_change_d_t"] == full["rel_change_d_t"]

    assert candidates_table([r for r in sweep if r["candidates"] == 2]) == []  # one count: nothing to compare
    md = write_markdown(tmp_path / "summary.md", "r", E.summarize(E.score_rows(base, [0.5]), 0.5, ["baseline", "pmg"]),
                        ["baseline", "pmg"], {}, [], {"pairs": 1, "candidates": 2, "alpha": 0.5}, sweep).read_text()
    table = md.split("By number of candidates")[1].splitlines()
    assert "| variant | n = 1 | n = 2 |" in table
    assert f"| {E.TITLES['pmg']} | 0% / +0.0% | 100% / +0.0% |" in table


def test_floored_shares_count_the_clamped_parts_and_the_note_names_them():
    base = [{"d_p_text": 30.0, "d_t_text": 40.0, "d_p_image": pi, "d_t_image": 20.0} for pi in (-1.0, 0.0, 5.0, 8.0)]
    shares = E.floored_shares(base)
    assert shares == {"d_p_text": 0.0, "d_t_text": 0.0, "d_p_image": 0.5, "d_t_image": 0.0}
    note = E.floor_note(shares)
    assert "d_p image 50 %" in note and "d_t image" not in note and "clamped to 0.0001" in note
    assert E.floor_note(E.floored_shares([{"d_p_text": 30.0, "d_t_text": 40.0, "d_p_image": None}])) is None


def test_score_rows_select_one_per_alpha_and_summary_against_the_baseline():
    base = []
    for v, dp in (("baseline", (20.0, 22.0)), ("pmg", (30.0, 25.0))):
        for c in (0, 1):
            base.append({"variant": v, "user_id": 1, "target_movie_id": 7, "candidate": c, "d_p_text": dp[c],
                         "d_t_text": (30.0, 20.0)[c], "d_p_image": None, "d_t_image": None,
                         "ssim_target": 0.5, "ssim_history": math.nan})
    rows = E.score_rows(base, [0.0, 1.0])
    assert len(rows) == 8
    pick = {(r["variant"], r["alpha"]): r["candidate"] for r in rows if r["selected"]}
    assert pick == {("baseline", 0.0): 0, ("baseline", 1.0): 1, ("pmg", 0.0): 0, ("pmg", 1.0): 0}
    summary = {r["variant"]: r for r in E.summarize(rows, 1.0, ["baseline", "pmg"])}
    assert summary["pmg"]["mean_d_p"] == 30.0 and summary["baseline"]["mean_d_p"] == 22.0
    assert summary["pmg"]["win_rate_d_p"] == 1.0
    assert summary["pmg"]["rel_change_d_t"] == pytest.approx(30.0 / 20.0 - 1)
    assert math.isnan(summary["pmg"]["mean_ssim_history"]) and math.isnan(summary["baseline"]["win_rate_d_p"])
    sweep = E.sweep(rows, ["pmg"])["pmg"]
    assert [a for a, _, _ in sweep] == [0.0, 1.0]


def test_ssim_scores_resize_posters_and_mark_missing_ones():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    t, h = E.ssim_scores(img, np.repeat(np.repeat(img, 2, 0), 2, 1), [])
    assert 0.5 < t <= 1.0 and math.isnan(h)


def test_fill_keywords_with_the_llm(tiny_models):
    lm, _ = tiny_models
    pairs = [_pair(1, 7, prefs=None), _pair(2, 8)]
    ps = E.PairSet(pairs, {8: ["kept"]}, {7: ("Movie 7", ["Drama"]), 8: ("Movie 8", [])})
    assert E.fill_item_keywords(lm, ps, [7, 8], max_new_tokens=6) == 1
    assert ps.item_keywords[8] == ["kept"] and isinstance(ps.item_keywords[7], list)
    assert E.fill_preferences(lm, ps, max_new_tokens=6) == 1
    assert isinstance(pairs[0].pref_keywords, list) and pairs[1].pref_keywords == ["dark", "noir"]


def test_world_reference_draws_the_caption_and_compares_with_its_own_baseline():
    from tasks.miniworld import posters, world

    pair = _pair(1, 7, prefs=world.block("Horror") + world.block("Comedy"))
    jobs = E.plan_jobs([pair], {7: world.block("Western")}, E.REFERENCE_VARIANTS, k=2, base_seed=0)
    by = {(j.variant, j.candidate): j for j in jobs}
    assert not any(j.soft for j in jobs)
    # The keywords caption is target + preference blocks: western background, both preferences' motifs.
    img = E.render_reference(by[("world_keywords", 0)], 32)
    assert np.array_equal(img, posters.render(["Western", "Horror", "Comedy"], None, by[("world_keywords", 0)].seed))
    assert np.array_equal(E.render_reference(by[("world_baseline", 1)], 32),
                          posters.render(["Western"], None, by[("world_baseline", 1)].seed))
    with pytest.raises(ValueError, match="names no genre of the world"):
        E.render_reference(E.plan_jobs([pair], {7: ["storm"]}, ["world_baseline"], k=1, base_seed=0)[0], 32)
    # The target's block must give the background even when the preferences name genres.
    with pytest.raises(ValueError, match=r"storm\" names no genre"):
        E.render_reference(E.plan_jobs([pair], {7: ["storm"]}, ["world_keywords"], k=1, base_seed=0)[0], 32)
    # A generated block without its genre word ("black, olive, stripes") is read by its style words.
    war = E.plan_jobs([pair], {7: ["black", "olive", "stripes"]}, E.REFERENCE_VARIANTS, k=1, base_seed=0)
    assert [E.reference_blocks(j)[0] for j in war] == [["War"], ["War", "Horror", "Comedy"]]

    rows = [{"variant": v, "user_id": 1, "target_movie_id": 7, "candidate": 0, "d_p_text": dp, "d_t_text": 40.0,
             "d_p_image": None, "d_t_image": None, "ssim_target": 0.5, "ssim_history": 0.5}
            for v, dp in (("baseline", 50.0), ("keywords", 30.0), ("world_baseline", 10.0), ("world_keywords", 20.0))]
    s = {r["variant"]: r for r in E.summarize(E.score_rows(rows, [0.5]), 0.5,
                                                ["baseline", "keywords", *E.REFERENCE_VARIANTS])}
    assert s["keywords"]["win_rate_d_p"] == 0.0        # against the SD baseline (50)
    assert s["world_keywords"]["win_rate_d_p"] == 1.0  # against the world's baseline (10), not the SD one
    assert math.isnan(s["world_baseline"]["win_rate_d_p"])


def test_soft_scale_follows_the_pipeline_config_unless_given():
    from flows.evaluate import soft_scale

    assert soft_scale({}, None) == 1.0
    assert soft_scale({"soft_scale": 0.5}, None) == 0.5   # what the pipeline uses for the same config
    assert soft_scale({"soft_scale": 0.5}, 2.0) == 2.0    # the command line wins
    with pytest.raises(ValueError, match="soft_scale"):
        soft_scale({}, -1.0)


def test_world_reference_images_and_report_rows(tmp_path):
    """Reference jobs are drawn by the renderer (no SD pipeline needed) and get their own report rows."""
    from flows.evaluate import generate_images, write_markdown
    from tasks.miniworld import world

    pair = _pair(1, 7, prefs=world.block("Horror"))
    jobs = E.plan_jobs([pair], {7: world.block("Western")}, E.REFERENCE_VARIANTS, k=1, base_seed=0)
    images = generate_images(None, jobs, None, steps=1, size=32, guidance=1.0, w_soft=1.0)
    assert [np.array_equal(im, E.render_reference(j, 32)) for im, j in zip(images, jobs)] == [True, True]

    rows = [{"variant": v, "user_id": 1, "target_movie_id": 7, "candidate": 0, "d_p_text": dp, "d_t_text": 40.0,
             "d_p_image": None, "d_t_image": None, "ssim_target": 0.5, "ssim_history": 0.5}
            for v, dp in (("baseline", 50.0), ("world_baseline", 10.0), ("world_keywords", 20.0))]
    variants = ["baseline", *E.REFERENCE_VARIANTS]
    summary = E.summarize(E.score_rows(rows, [0.5]), 0.5, variants)
    md = write_markdown(tmp_path / "summary.md", "r", summary, variants, {}, [],
                        {"pairs": 1, "candidates": 1, "alpha": 0.5}).read_text()
    line = next(x for x in md.splitlines() if x.startswith(f"| {E.TITLES['world_keywords']} |"))
    assert "| 100% |" in line  # compared with the world's own baseline caption (10 < 20)
