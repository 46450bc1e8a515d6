"""Progress of a pipeline run: a no-op by default, a one-line terminal bar when the CLI installs it."""
from __future__ import annotations

import sys
import time


class Progress:
    """Interface (and the silent default) used by the flows."""

    def stage(self, name: str, total: int, unit: str, skipped: int = 0) -> None:
        pass

    def advance(self, items: int, images: int = 0, failed: int = 0) -> None:
        pass

    def end_stage(self) -> None:
        pass


class TerminalProgress(Progress):
    """`generate   40/120 pairs  160 images  2.1 pairs/s  ETA 0:38` on stderr, redrawn in place."""

    def __init__(self, stream=None, min_interval_s: float = 0.2):
        # sys.stderr looked up now, not at import: it may have been replaced since (capture, redirection)
        self.stream, self.min_interval = stream or sys.stderr, min_interval_s
        self.name, self.total, self.unit = "", 0, ""
        self.done = self.images = self.failed = 0
        self.started = self.last_draw = 0.0

    def stage(self, name: str, total: int, unit: str, skipped: int = 0) -> None:
        self.name, self.total, self.unit = name, total, unit
        self.done = self.images = self.failed = 0
        self.started = time.monotonic()
        if total == 0:
            self.stream.write(f"{name:<14} nothing to do ({skipped} {unit} up to date)\n")
        else:
            self._draw(force=True)

    def advance(self, items: int, images: int = 0, failed: int = 0) -> None:
        self.done += items
        self.images += images
        self.failed += failed
        self._draw()

    def end_stage(self) -> None:
        if self.total:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_draw < self.min_interval:
            return
        self.last_draw = now
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else None
        parts = [f"{self.name:<14} {self.done:>5}/{self.total} {self.unit}"]
        if self.images:
            parts.append(f"{self.images} images")
        if self.failed:
            parts.append(f"{self.failed} failed")
        parts.append(f"{rate:.2f} {self.unit}/s" if self.done else "starting")
        parts.append(f"ETA {_clock(eta)}" if eta is not None and self.done < self.total else f"{_clock(elapsed)}")
        self.stream.write("\r" + "  ".join(parts) + "\033[K")
        self.stream.flush()


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


_current: Progress = Progress()


def get() -> Progress:
    return _current


def install(progress: Progress) -> None:
    global _current
    _current = progress
