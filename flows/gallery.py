"""A simple static gallery: per (user, target) the history, keywords, candidates with scores, the chosen poster."""
from __future__ import annotations

import html
import os
from pathlib import Path

from warehouse.db import connect_reader
from warehouse.ledger import sql

PAGE = """<!doctype html><meta charset="utf-8"><title>PMG posters</title>
<style>body{{font-family:sans-serif;margin:2em}}section{{border-top:1px solid #ccc;padding:1em 0}}
figure{{display:inline-block;margin:0 1em 1em 0;text-align:center;font-size:12px}}
img{{width:128px;height:128px;image-rendering:pixelated;border:3px solid #eee}}
.sel img{{border-color:#2a2}}.kw{{color:#555}}</style>
<h1>Personalized posters</h1><p>{note}</p>{sections}"""


def write_gallery(warehouse, out: Path | str, run_id: str | None = None, limit: int = 100) -> int:
    """Write the page to `out` (image links relative to it); returns the number of (user, target) shown."""
    root, out = Path(warehouse).resolve(), Path(out).resolve()
    with connect_reader(root) as con:
        cur = con.execute(sql("pipeline_gallery"), {"run_id": run_id, "limit": limit})
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
        titles = dict(con.execute("SELECT movie_id, title FROM movies").fetchall())
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["user_id"], r["target_movie_id"]), []).append(r)
    sections = [_section(g, titles, root, out.parent) for g in groups.values()]
    note = (f"{len(groups)} (user, target) pairs. Green border = selected candidate (highest z). "
            "Tiny random-weight models produce placeholder images.")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(PAGE.format(note=html.escape(note), sections="\n".join(sections)), encoding="utf-8")
    return len(groups)


def _section(cands: list[dict], titles: dict, root: Path, page_dir: Path) -> str:
    first = cands[0]
    e = html.escape
    history = ", ".join(e(titles.get(m, str(m))) for m in (first["history_movie_ids"] or []))
    figs = []
    for c in cands:
        src = os.path.relpath(root / c["image_path"], page_dir)
        score = "" if c["z"] is None else f"z={c['z']:.3f} d_p={c['d_p']:.1f} d_t={c['d_t']:.1f}"
        figs.append(f'<figure class="{"sel" if c["selected"] else ""}"><img src="{e(src)}" alt="candidate">'
                    f"<figcaption>#{c['candidate']} w={c['weight']:g} seed={c['seed']}<br>{score}</figcaption></figure>")
    return (f"<section><h3>user {first['user_id']} · {e(first['title'] or str(first['target_movie_id']))}</h3>"
            f"<p>history: {history or '—'}</p>"
            f"<p class=kw>preference keywords: {e(', '.join(first['preference_keywords'] or []) or '—')}<br>"
            f"target keywords: {e(', '.join(first['target_keywords'] or []) or '—')}</p>{''.join(figs)}</section>")
