"""The gallery in real headless Chromium: pages load, every image renders, no console errors; moved folders work."""
import contextlib
import functools
import html
import re
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flows import cli
from flows.gallery import write_gallery
from tests.ops.browser import Chromium, ensure_chromium
from warehouse.db import connect_reader


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    browser = Chromium(ensure_chromium(), tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield browser
    finally:
        browser.close()


@contextlib.contextmanager
def serve(directory):
    """A tiny static HTTP server on 127.0.0.1 (random port) for `directory`."""
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def expected(root):
    with connect_reader(root) as con:
        users = [r[0] for r in con.execute("SELECT DISTINCT user_id FROM posters ORDER BY 1").fetchall()]
        cands = con.execute("SELECT count(*) FROM generations").fetchone()[0]
        titles = con.execute("SELECT m.title FROM user_preferences p, unnest(p.history_movie_ids) AS h(movie_id) "
                             "JOIN movies m USING (movie_id)").fetchall()
    return users, cands, [t for (t,) in titles]


def test_gallery_pages_render_in_chromium_after_moving_the_folder(backfilled, chromium, tmp_path):
    root, result = backfilled
    users, n_candidates, history_titles = expected(root)
    assert len(users) >= 3
    shown = write_gallery(root, tmp_path / "site" / "posters.html", per_page=2)
    assert shown == len(users)
    n_pages = -(-len(users) // 2)
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "site", moved)  # relative links: the folder works anywhere
    pages = ["posters.html"] + [f"posters-{i}.html" for i in range(2, n_pages + 1)]
    assert sorted(p.name for p in moved.glob("*.html")) == sorted(pages)
    text = "".join((moved / p).read_text() for p in pages)
    assert text.count("<figure") == n_candidates and text.count("★ selected") == result["counts"]["selection"]["pairs"]
    for needle in ("preference keywords:", "history:", "target:", "d_p ", "d_t ", "z "):
        assert needle in text
    assert all(html.escape(t) in text for t in history_titles)
    assert not re.search(r'src="(/|file:|http)', text)  # only relative image links

    images_seen = 0
    with serve(moved) as base:
        for page in pages:
            report = chromium.open_page(f"{base}/{page}")
            assert report.loaded and report.errors == [], (page, report.errors)
            assert report.images and all(i["complete"] and i["naturalWidth"] > 0 for i in report.images), report.images
            images_seen += len(report.images)
    assert images_seen == n_candidates
    report = chromium.open_page((moved / pages[-1]).as_uri())  # and straight from disk
    assert report.loaded and report.errors == [] and all(i["naturalWidth"] > 0 for i in report.images)


def test_gallery_written_by_the_backfill_renders(backfilled, chromium):
    root, result = backfilled
    report = chromium.open_page((root / "gallery" / "index.html").as_uri())
    assert report.loaded and report.errors == [] and report.images
    assert all(i["naturalWidth"] > 0 for i in report.images)


def test_gallery_command_for_one_run(backfilled, tmp_path, capsys):
    root, result = backfilled
    out = tmp_path / "one-run.html"
    assert cli.main(["--warehouse", str(root), "gallery", str(out), "--run", result["run_id"], "--per-page", "1"]) == 0
    assert "one-run.html" in capsys.readouterr().out
    pages = sorted(tmp_path.glob("one-run*.html"))
    assert len(pages) == len(expected(root)[0]) > 1
    assert sum(p.read_text().count("★ selected") for p in pages) == result["counts"]["selection"]["pairs"]
    assert cli.main(["--warehouse", str(root), "gallery", str(out), "--run", result["run_id"]]) == 0
    assert sorted(tmp_path.glob("one-run*.html")) == [out]  # one page now: the earlier pages 2.. are gone
    assert cli.main(["--warehouse", str(root), "gallery", str(out), "--run", "no-such-run"]) == 1
    assert "no run 'no-such-run'" in capsys.readouterr().err and out.exists()  # a typo changes nothing
