"""The gallery: static HTML pages of users with their history, keywords, candidates and chosen posters.

Per user: the titles of the history the preferences were built from, the preference keywords, and
for every target the candidates with d_p, d_t and z, the selected one marked. Pages hold PER_PAGE
users each (OUT.html, OUT-2.html, ...) and at most `limit` users in all. The images shown are
hard-linked (or copied) into OUT's folder under <stem>_images/ and referenced relatively, so the
folder can be moved or served as it is (e.g. `python -m http.server -d FOLDER`).
"""
from __future__ import annotations

import hashlib
import html
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from warehouse import queries
from warehouse.db import connect_reader

PER_PAGE = 50
LIMIT = 1000

STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
header p,nav{color:#555}nav a{margin-right:1em}
section{border-top:1px solid #ccc;padding:.8em 0}
h2{font-size:1.1em;margin:.2em 0}h3{font-size:1em;margin:.8em 0 .3em}
.kw{color:#555}.hist{font-size:.9em;color:#444}
figure{display:inline-block;margin:0 .8em .8em 0;text-align:center;font-size:12px;vertical-align:top}
img{width:128px;height:128px;image-rendering:pixelated;border:4px solid #eee}
.sel img{border-color:#2a2}.sel figcaption b{color:#2a2}
.own img{border:3px dashed #888}.own.small img{width:48px;height:48px}.own.small figcaption{display:none}"""


@dataclass(frozen=True)
class Page:
    number: int
    users: list[int]


def write_gallery(warehouse, out: Path | str, run_id: str | None = None, limit: int = LIMIT,
                  per_page: int = PER_PAGE) -> int:
    """Write OUT.html (and OUT-2.html, ... when needed); returns the number of users shown."""
    if limit < 1 or per_page < 1:
        raise ValueError(f"--limit and --per-page must be at least 1, got {limit} and {per_page}")
    root, out = Path(warehouse).resolve(), Path(out).resolve()
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"gallery output must be an .html file, got {out.name}")
    with connect_reader(root) as con:
        if run_id is not None and not queries.run(con, "ops_run_exists", {"run_id": run_id}).fetchone()[0]:
            raise ValueError(f"no run {run_id!r} in {root}; `pmg status` lists the recent run ids")
        found = queries.run(con, "ops_gallery_users", {"run_id": run_id, "limit": limit}).fetchall()
        users = [u for u, _ in found]
        total = found[0][1] if found else 0
        pages = [Page(i // per_page + 1, users[i:i + per_page]) for i in range(0, len(users), per_page)] or [Page(1, [])]
        images_dir = out.parent / f"{out.stem}_images"
        out.parent.mkdir(parents=True, exist_ok=True)
        for page in pages:
            rows = _rows(con, page.users, run_id)
            titles = _titles(con, rows)
            body = [_user_section(user_rows, titles, root, images_dir, out.parent) for user_rows in _by_user(rows)]
            header = _header(run_id, len(users), total, page, len(pages))
            nav = _nav(out, page.number, len(pages))
            _write(page_path(out, page.number), _page(header, nav, body))
    stale = len(pages) + 1
    while page_path(out, stale).exists():  # pages of an earlier, longer gallery
        page_path(out, stale).unlink()
        stale += 1
    return len(users)


def page_path(out: Path, number: int) -> Path:
    return out if number == 1 else out.with_name(f"{out.stem}-{number}{out.suffix}")


def _rows(con, users: list[int], run_id: str | None) -> list[dict]:
    if not users:
        return []
    cur = queries.run(con, "ops_gallery", {"users": users, "run_id": run_id})
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def _titles(con, rows: list[dict]) -> dict[int, str]:
    ids = sorted({m for r in rows for m in (r["history_movie_ids"] or [])} | {r["target_movie_id"] for r in rows})
    return dict(queries.run(con, "ops_titles", {"ids": ids}).fetchall()) if ids else {}


def _by_user(rows: list[dict]) -> list[list[dict]]:
    groups: dict[int, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["user_id"], []).append(r)
    return list(groups.values())


def _header(run_id, shown: int, total: int, page: Page, n_pages: int) -> str:
    scope = f"run {html.escape(run_id)}" if run_id else "the newest poster of every (user, target)"
    capped = f" (the first {shown} of {total} users)" if total > shown else ""
    return (f"<header><h1>Personalized posters</h1><p>{scope}: {shown} users{capped}, page {page.number} of "
            f"{n_pages}. Green border: the selected candidate (highest z = α·log d_p + (1−α)·log d_t); d_p: "
            "similarity to the user's preferences, d_t: to the target. Dashed border: the movie's own poster, "
            "when the warehouse has a posters/ folder. Tiny random-weight models make placeholder "
            "images.</p></header>")


def _nav(out: Path, number: int, n_pages: int) -> str:
    if n_pages == 1:
        return ""
    links = []
    if number > 1:
        links.append(f'<a href="{html.escape(page_path(out, number - 1).name)}">‹ previous</a>')
    links += [f"<b>{i}</b>" if i == number else f'<a href="{html.escape(page_path(out, i).name)}">{i}</a>'
              for i in range(1, n_pages + 1)]
    if number < n_pages:
        links.append(f'<a href="{html.escape(page_path(out, number + 1).name)}">next ›</a>')
    return "<nav>" + " ".join(links) + "</nav>"


def _user_section(rows: list[dict], titles: dict, root: Path, images_dir: Path, page_dir: Path) -> str:
    e = html.escape
    first = rows[0]
    history_ids = first["history_movie_ids"] or []
    history = "; ".join(e(titles.get(m) or str(m)) for m in history_ids)
    prefs = ", ".join(first["preference_keywords"] or [])
    targets: dict[int, list[dict]] = {}
    for r in rows:
        targets.setdefault(r["target_movie_id"], []).append(r)
    parts = [f'<section id="user-{first["user_id"]}"><h2>User {first["user_id"]}</h2>',
             f'<p class="hist">history: {history or "—"}</p>',
             "".join(_own_poster(m, titles, root, images_dir, page_dir, 48) for m in history_ids),
             f'<p class="kw">preference keywords: {e(prefs) or "—"}</p>']
    for movie_id, cands in targets.items():
        title = titles.get(movie_id) or cands[0]["title"] or str(movie_id)
        parts.append(f'<h3>target: {e(title)} <span class="kw">({e(", ".join(cands[0]["target_keywords"] or []))})'
                     "</span></h3>")
        parts.append(_own_poster(movie_id, titles, root, images_dir, page_dir, 128))
        parts += [_figure(c, root, images_dir, page_dir) for c in cands]
    parts.append("</section>")
    return "\n".join(parts)


def _figure(c: dict, root: Path, images_dir: Path, page_dir: Path) -> str:
    src = os.path.relpath(_place_image(root / c["image_path"], images_dir, c["image_sha256"]), page_dir)
    scores = ("not scored yet" if c["z"] is None else
              f"d_p {c['d_p']:.2f} · d_t {c['d_t']:.2f}<br>z {c['z']:.4f}")
    mark = "<br><b>★ selected</b>" if c["selected"] else ""
    return (f'<figure class="{"sel" if c["selected"] else "cand"}"><img src="{html.escape(src)}" '
            f'alt="candidate {c["candidate"]}" width="128" height="128"><figcaption>#{c["candidate"]} '
            f"w={c['weight']:g} seed={c['seed']}<br>{scores}{mark}</figcaption></figure>")


def _own_poster(movie_id: int, titles: dict, root: Path, images_dir: Path, page_dir: Path, size: int) -> str:
    """The movie's own poster from <warehouse>/posters/<id>.png (e.g. the miniature world's), if there is one."""
    source = root / "posters" / f"{int(movie_id)}.png"
    if not source.is_file():
        return ""
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    src = os.path.relpath(_place_image(source, images_dir, sha), page_dir)
    title = html.escape(titles.get(movie_id) or str(movie_id))
    return (f'<figure class="own{" small" if size < 128 else ""}"><img src="{html.escape(src)}" alt="poster of {title}" width="{size}" '
            f'height="{size}"><figcaption>{title}</figcaption></figure>')


def _place_image(source: Path, images_dir: Path, sha256: str) -> Path:
    """The image under the page's folder: a hard link to the warehouse file, or a copy across devices."""
    target = images_dir / f"{sha256}{source.suffix}"
    if not target.exists():
        images_dir.mkdir(parents=True, exist_ok=True)
        tmp = images_dir / f".tmp-{sha256}"
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    return target


def _page(header: str, nav: str, sections: list[str]) -> str:
    return ('<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>PMG posters</title>'
            '<link rel="icon" href="data:,">'
            f"<style>{STYLE}</style></head><body>\n{header}\n{nav}\n" + "\n".join(sections) + f"\n{nav}\n</body></html>\n")


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
