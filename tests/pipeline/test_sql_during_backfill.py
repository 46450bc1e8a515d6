"""Readers during a backfill: `pmg sql` queries run while another process writes, and see only committed data.

A backfill runs in a subprocess (the real CLI) while this process polls the published catalog through
`connect_reader` + `read_query` (what `pmg sql` does) and, in a thread, runs `pmg sql` itself. Every query
must succeed; each snapshot must be whole (no pair with part of its candidates or scores, no row whose
chunk commit is missing, no referenced image missing); counts never decrease; the final counts match.
"""
import json
import subprocess
import sys
import threading
import time

from tests.pipeline.conftest import check_invariants, subprocess_env
from warehouse import images
from warehouse.db import connect_reader, read_query

K = 2
ARGS = ["backfill", "--targets", "holdout", "--candidates", str(K), "--steps", "2", "--height", "32", "--width", "32",
        "--chunk-size", "2", "--limit-users", "3"]
DEADLINE_S = 80
# The real CLI, with the flow's periodic publish (every 30 s) made per chunk: readers then see every
# intermediate state, deterministically, instead of only the end of each stage.
PMG_PUBLISH_EVERY_CHUNK = ("import sys; import flows.runner as r; r.PUBLISH_EVERY_S = 0.0; "
                           "from flows.cli import main; sys.exit(main())")
COUNTS = {
    "item_keywords": "SELECT count(*) FROM item_keywords",
    "user_preferences": "SELECT count(*) FROM user_preferences",
    "generations": "SELECT count(*) FROM generations",
    "scores": "SELECT count(*) FROM scores",
    "posters": "SELECT count(*) FROM posters",
    "chunk_commits": "SELECT count(*) FROM chunk_commits",
    "ledger_done": "SELECT count(*) FROM work_ledger WHERE status = 'done'",
}


def _uncommitted(table: str, stage: str, key: str) -> str:
    """Rows of `table` whose ledger row or (run, stage, chunk) commit is not visible in the same snapshot."""
    return (f"SELECT count(*) FROM {table} AS x LEFT JOIN work_ledger AS l ON l.stage = '{stage}' "
            f"AND l.item_key = {key} AND l.status = 'done' LEFT JOIN chunk_commits AS c "
            f"ON c.run_id = l.run_id AND c.stage = l.stage AND c.chunk = l.chunk WHERE c.run_id IS NULL")


PAIR_KEY = "x.user_id::VARCHAR || ':' || x.target_movie_id::VARCHAR"
# Each must be 0 in every snapshot a reader sees.
VIOLATIONS = {
    "pair with a partial set of candidates": f"SELECT count(*) FROM (SELECT user_id, target_movie_id FROM generations "
                                             f"GROUP BY ALL HAVING count(*) <> {K})",
    "poster without all its scores": f"SELECT count(*) FROM posters AS p WHERE (SELECT count(*) FROM scores AS s "
                                     f"WHERE s.user_id = p.user_id AND s.target_movie_id = p.target_movie_id) <> {K}",
    "scored pair without exactly one selected": "SELECT count(*) FROM (SELECT user_id, target_movie_id FROM scores "
                                                "GROUP BY ALL HAVING count(*) FILTER (WHERE selected) <> 1)",
    "score without its generation": "SELECT count(*) FROM scores AS s ANTI JOIN generations AS g USING (generation_id)",
    "preference row of an uncommitted chunk": _uncommitted("user_preferences", "preferences", "x.user_id::VARCHAR"),
    "generation row of an uncommitted chunk": _uncommitted("generations", "generate", PAIR_KEY),
    "score row of an uncommitted chunk": _uncommitted("scores", "score", PAIR_KEY),
}


def observe(root, seen_images: set) -> dict:
    """One reader session: counts, invariant violations, and a check of newly referenced images."""
    with connect_reader(root) as con:
        counts = {name: read_query(con, q)[1][0][0] for name, q in COUNTS.items()}
        bad = {name: n for name, q in VIOLATIONS.items() if (n := read_query(con, q)[1][0][0])}
        gens = read_query(con, "SELECT image_path, image_sha256 FROM generations")[1]
    new = [g for g in gens if g not in seen_images]
    missing = [p for p, sha in new if not images.verify(root, p, sha)]
    seen_images.update(new)
    return {"counts": counts, "violations": bad, "missing_images": missing}


def pmg_sql_loop(root, env, stop: threading.Event, alive, results: list) -> None:
    """Run the real `pmg sql` repeatedly while the writer lives; record (alive_before, returncode, output)."""
    while not stop.is_set():
        before = alive()
        out = subprocess.run([sys.executable, "-m", "flows", "--warehouse", str(root), "sql", "--format", "json",
                              "SELECT (SELECT count(*) FROM generations) AS g, (SELECT count(*) FROM posters) AS p"],
                             env=env, capture_output=True, text=True, timeout=60)
        results.append((before and alive(), out.returncode, out.stdout + out.stderr))
        stop.wait(1.0)  # leave the two cores to the writer


def test_sql_queries_during_a_backfill_see_only_committed_data(make_warehouse, prefect_api):
    root = make_warehouse()
    env = subprocess_env(prefect_api)
    writer = subprocess.Popen([sys.executable, "-c", PMG_PUBLISH_EVERY_CHUNK, "--warehouse", str(root), *ARGS], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    alive = lambda: writer.poll() is None  # noqa: E731
    stop, cli_results = threading.Event(), []
    cli = threading.Thread(target=pmg_sql_loop, args=(root, env, stop, alive, cli_results), daemon=True)
    cli.start()
    seen_images: set = set()
    history, overlapped = [], 0
    start = time.monotonic()
    try:
        while True:
            was_alive = alive()
            snap = observe(root, seen_images)
            assert not snap["violations"], (snap, len(history))
            assert not snap["missing_images"], snap
            if history:
                prev = history[-1]["counts"]
                shrunk = {k: (prev[k], v) for k, v in snap["counts"].items() if v < prev[k]}
                assert not shrunk, f"counts decreased between reads: {shrunk}"
            history.append(snap)
            # overlapped: the writer was alive across the whole read and a chunk was already committed
            overlapped += was_alive and alive() and snap["counts"]["chunk_commits"] > 0
            if not was_alive:
                break
            assert time.monotonic() - start < DEADLINE_S, "backfill did not finish in time"
            time.sleep(0.2)
    finally:
        stop.set()
        if alive():
            writer.kill()
        out, err = writer.communicate(timeout=30)
        cli.join(timeout=60)
    assert writer.returncode == 0, err[-3000:]
    assert overlapped >= 2, f"only {overlapped} reads overlapped the writer after its first commit ({len(history)} reads)"
    assert cli_results and all(rc == 0 for _, rc, _ in cli_results), cli_results
    assert any(during for during, _, _ in cli_results), "no `pmg sql` ran while the writer was alive"
    for _, _, text in cli_results:
        json.loads(text.strip().splitlines()[-1])

    # The end state: what readers see equals what the run says it made.
    check_invariants(root)
    final = observe(root, seen_images)
    with connect_reader(root) as con:
        (status, counts), = read_query(con, "SELECT status, counts FROM runs WHERE flow = 'backfill'")[1]
    counts = json.loads(counts)
    pairs = counts["selection"]["pairs"]
    assert status == "completed" and pairs > 0
    assert final["counts"] == history[-1]["counts"]
    assert final["counts"]["posters"] == pairs
    assert final["counts"]["generations"] == final["counts"]["scores"] == K * pairs
    assert final["counts"]["user_preferences"] == counts["selection"]["users"]
    stages = ("item_keywords", "preferences", "generate", "score")
    chunks = sum(-(-(counts[s]["processed"] + counts[s]["failed"]) // 2) for s in stages)  # --chunk-size 2
    assert final["counts"]["chunk_commits"] == chunks
