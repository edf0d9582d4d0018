"""Plain counters the served model keeps for whoever serves it (no metrics library ships with it).

The model server (``neuralstyle.run.server``) turns them into Prometheus metrics: static compiles
and their seconds, photos running and waiting for a slot, and, per request, what each row ran
(kind of style, precision, size) for the latency histogram's labels. Nothing here is exported
anywhere by itself; reading the numbers costs a lock.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

# The kinds of style a row can run, as the server's latency histogram labels them.
KIND_STYLES26, KIND_CHECKPOINT, KIND_PAINTING = "styles26", "checkpoint", "painting"


@dataclass
class Counters:
    """Process-wide totals (one loaded model per server process)."""

    static_compiles: int = 0
    static_compile_seconds: float = 0.0
    photos_running: int = 0
    photos_waiting: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot(self) -> dict[str, float]:
        """The numbers now, without the lock."""
        with self.lock:
            return {"static_compiles": self.static_compiles,
                    "static_compile_seconds": self.static_compile_seconds,
                    "photos_running": self.photos_running, "photos_waiting": self.photos_waiting}


COUNTERS = Counters()
# The rows of the request being served: the server sets a fresh list per request; MLflow runs
# predict in asyncio.to_thread, which copies the context, so the same list reaches the model.
ROWS: ContextVar[list[dict[str, Any]] | None] = ContextVar("stylize_rows", default=None)
# The photo slot this thread holds (``photo_slot``), so a wait further in can hand it back.
SLOT: ContextVar[threading.BoundedSemaphore | None] = ContextVar("stylize_slot", default=None)


def timed_compile(compile_fn: Callable[[], Any]) -> Any:
    """Run one static compile and count it with its seconds (failed ones too)."""
    started = time.perf_counter()
    try:
        return compile_fn()
    finally:
        seconds = time.perf_counter() - started
        with COUNTERS.lock:
            COUNTERS.static_compiles += 1
            COUNTERS.static_compile_seconds += seconds


@contextlib.contextmanager
def photo_slot(slots: threading.BoundedSemaphore) -> Iterator[None]:
    """Hold one of the model's photo slots, counted as waiting, then running."""
    with COUNTERS.lock:
        COUNTERS.photos_waiting += 1
    try:
        slots.acquire()
    finally:
        with COUNTERS.lock:
            COUNTERS.photos_waiting -= 1
    token = SLOT.set(slots)
    try:
        with COUNTERS.lock:
            COUNTERS.photos_running += 1
        yield
    finally:
        SLOT.reset(token)
        with COUNTERS.lock:
            COUNTERS.photos_running -= 1
        slots.release()


class Turn:
    """Who may run beside whom: a photo in bands runs alone (``exclusive``); photos in one piece
    whose buffers are large run beside each other (``shared``), never beside one in bands.

    A photo that must wait hands back the photo slot it holds (counted as waiting), so it does
    not keep small photos out, and takes a slot again once its turn has come: whoever holds a
    slot meanwhile either finishes or comes here and hands it back, so the wait ends. A photo
    in bands that waits keeps new shared ones out, so a stream of them cannot starve it.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._exclusive_waiting = 0

    def _free(self, exclusive: bool) -> bool:
        if exclusive:
            return not self._exclusive and self._shared == 0
        return not self._exclusive and self._exclusive_waiting == 0

    @contextlib.contextmanager
    def hold(self, exclusive: bool) -> Iterator[None]:
        """Hold the turn, alone or shared, for the ``with`` block."""
        slots = SLOT.get()
        handed_back = False
        with self._cond:
            if not self._free(exclusive):
                if slots is not None:
                    with COUNTERS.lock:
                        COUNTERS.photos_running -= 1
                        COUNTERS.photos_waiting += 1
                    slots.release()
                    handed_back = True
                self._exclusive_waiting += exclusive
                try:
                    self._cond.wait_for(lambda: self._free(exclusive))
                finally:
                    self._exclusive_waiting -= exclusive
            if exclusive:
                self._exclusive = True
            else:
                self._shared += 1
        try:
            if handed_back:
                try:
                    slots.acquire()  # type: ignore[union-attr]
                finally:
                    with COUNTERS.lock:
                        COUNTERS.photos_waiting -= 1
                        COUNTERS.photos_running += 1
            yield
        finally:
            with self._cond:
                if exclusive:
                    self._exclusive = False
                else:
                    self._shared -= 1
                self._cond.notify_all()


def record_row(kind: str, precision: str, width: int, height: int) -> None:
    """Tell the server what a row ran (a no-op outside a server request)."""
    rows = ROWS.get()
    if rows is not None:
        rows.append({"kind": kind, "precision": precision, "width": width, "height": height})
