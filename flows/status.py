"""`pmg status`: recent runs with their state and counts, and what the next nightly would recompute.

Everything is read through the published catalog (a reader), so it works while a run is writing.
The plan is the ledger's view: the last finished backfill's selection is fingerprinted with the
current data and models, and every item whose fingerprint differs (or whose last attempt failed)
is pending. A changed upstream item also makes its dependents pending (a movie's keywords feed the
preferences of users who liked it; a user's preferences feed that user's posters).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from warehouse import ledger, queries
from warehouse.db import connect_reader

REPEATED = ("targets", "movies", "users_file", "limit_users", "candidates", "alpha", "steps", "height", "width",
            "guidance", "seed", "chunk_size")


@dataclass
class NextNightly:
    based_on: str | None                     # run whose selection the nightly repeats (None: no backfill yet)
    movies: list[int] = field(default_factory=list)            # item keywords to recompute
    users: list[int] = field(default_factory=list)             # preferences to recompute
    pairs: list[tuple[int, int]] = field(default_factory=list)  # (user, target) to regenerate and rescore
    selected_pairs: int = 0
    error: str | None = None                 # why no plan could be made (e.g. missing checkpoints)


def last_backfill(con) -> tuple[str, dict] | None:
    """(run id, the parameters a nightly repeats) of the newest finished backfill or nightly, or None."""
    row = queries.run(con, "ops_last_backfill").fetchall()
    if not row:
        return None
    stored = json.loads(row[0][1])
    return row[0][0], {k: stored.get(k) for k in REPEATED}


def require_backfill(con, root) -> dict:
    """The parameters the next nightly repeats; a clear error when no backfill has finished yet."""
    last = last_backfill(con)
    if last is None:
        raise ValueError(f"no finished backfill in {root}; run `pmg backfill` (or `pmg demo`) once first")
    return last[1]


def recent_runs(root, limit: int = 10) -> list[dict]:
    with connect_reader(root) as con:
        cur = queries.run(con, "ops_recent_runs", {"limit": limit})
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
    for r in rows:
        r["counts"] = json.loads(r["counts"]) if r["counts"] else {}
    return rows


def failed_items(root) -> dict[str, int]:
    with connect_reader(root) as con:
        return dict(queries.run(con, "ops_failed_items").fetchall())


def next_nightly(root, config: str | None = None) -> NextNightly:
    """What `pmg nightly` (without new data) would recompute now."""
    from flows import settings
    from tasks import plan, targets

    with connect_reader(root) as con:
        last = last_backfill(con)
        if last is None:
            return NextNightly(None)
        run_id, repeated = last
        try:
            p, _ = settings.resolve(root, repeated, config)
        except (ValueError, OSError) as e:
            return NextNightly(run_id, error=str(e))
        users = targets.select_users(con, p.get("users_file"), p.get("limit_users"))
        sel = targets.select_targets(con, users, p.get("targets"), p.get("movies"))
        hist = targets.histories(con, sel, p["n_history"])
        movies = {m for _, m in sel.pairs} | {h["movie_id"] for items in hist.values() for h in items}
        m_todo = {int(k) for k in _pending(con, "item_keywords", plan.item_inputs(con, movies, p))}
        u_todo = {int(k) for k in _pending(con, "preferences", plan.preference_inputs(con, hist, p))}
        u_todo |= {u for u, items in hist.items() if any(h["movie_id"] in m_todo for h in items)}
        pair_keys = _pending(con, "generate", plan.generation_inputs(con, sel.pairs, p))
        pair_keys |= _pending(con, "score", plan.score_inputs(con, sel.pairs, p))
        pairs = {tuple(int(x) for x in k.split(":")) for k in pair_keys}
        pairs |= {(u, t) for u, t in sel.pairs if u in u_todo or t in m_todo}
        # pairs whose preferences never succeeded have no generation input yet; they are still pending
        return NextNightly(run_id, sorted(m_todo), sorted(u_todo), sorted(pairs), len(sel.pairs))


def _pending(con, stage: str, inputs: list[dict]) -> set[str]:
    return set(ledger.pending(con, stage, {r["key"]: r["fingerprint"] for r in inputs}))


def render(runs: list[dict], failed: dict[str, int], posters: int, plan: NextNightly) -> str:
    """The text `pmg status` prints."""
    lines = ["Recent runs (newest first):"]
    if not runs:
        lines.append("  none yet; run `pmg backfill` (or `pmg demo`)")
    for r in runs:
        c = r["counts"]
        stages = [c[s] for s in ("item_keywords", "preferences", "generate", "score") if s in c]
        total = {k: sum(s.get(k, 0) for s in stages) for k in ("processed", "skipped", "failed", "images")}
        took = f"{r['seconds']:.0f} s" if r["seconds"] is not None else "-"
        sel = c.get("selection", {})
        lines.append(f"  {r['run_id']:<32} {r['flow']:<10} {r['status']:<10} {str(r['started_at'])[:19]}  {took:>7}"
                     f"  users {sel.get('users', 0)}, pairs {sel.get('pairs', 0)}, processed {total['processed']},"
                     f" skipped {total['skipped']}, failed {total['failed']}, images {total['images']}")
    lines.append(f"Posters: {posters}. Failed items (retried by the next run): "
                 + (", ".join(f"{s} {n}" for s, n in failed.items()) or "none"))
    if plan.based_on is None:
        lines.append("Next nightly: nothing to repeat yet (no finished backfill).")
    elif plan.error:
        lines.append(f"Next nightly: cannot plan ({plan.error}).")
    elif not (plan.movies or plan.users or plan.pairs):
        lines.append(f"Next nightly (repeats {plan.based_on}): nothing to recompute, all "
                     f"{plan.selected_pairs} (user, target) pairs are up to date.")
    else:
        lines.append(f"Next nightly (repeats {plan.based_on}) would recompute: keywords of {len(plan.movies)} movies, "
                     f"preferences of {len(plan.users)} users, up to {len(plan.pairs)} of {plan.selected_pairs} "
                     "(user, target) pairs.")
        if plan.users:
            lines.append("  users: " + _ids(plan.users))
    return "\n".join(lines)


def posters_count(root) -> int:
    with connect_reader(root) as con:
        return con.execute("SELECT count(*) FROM posters").fetchone()[0]


def _ids(values: list[int], show: int = 20) -> str:
    text = ", ".join(str(v) for v in values[:show])
    return text + (f", ... ({len(values)} in all)" if len(values) > show else "")


def status_text(root: Path | str, limit: int = 10, config: str | None = None) -> str:
    return render(recent_runs(root, limit), failed_items(root), posters_count(root), next_nightly(root, config))
