"""Served sessions: what runs when, and what a failure shows.

- :data:`BACKLOG`: the slower panels of a served session are built after its
  first paint, one at a time and only while no session is waiting for its
  own first paint, so sessions arriving together each see the model input
  and the controls first (:func:`defer`).
- :func:`on_loop`: how a thread hands a result back to its session
  (``Document.add_next_tick_callback``, the one thread-safe Document method).
- :func:`handle_exception` (Panel's ``config.exception_handler``): any
  exception of a callback goes to the server's log with its traceback; the
  page shows one line (:func:`register_notice`), never a traceback.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
import weakref
from typing import Any, Callable

import panel as pn

from perturber.pipeline.errors import PerturberError, one_line

__all__ = ["Backlog", "BACKLOG", "defer", "served", "on_loop", "register_notice", "handle_exception", "failure", "log"]

log = logging.getLogger("perturber.viewer")


def served() -> Any:
    """The current session's Document when it is served (None: a script, a test, a notebook)."""
    doc = pn.state.curdoc
    return doc if doc is not None and doc.session_context is not None else None


def on_loop() -> Callable[[Callable[[], Any]], Any] | None:
    """A thread-safe way to run a callback on the current served session's
    event loop (with its document locked), or None when not served."""
    doc = served()
    return None if doc is None else doc.add_next_tick_callback


def _gone(doc: Any) -> bool:
    context = doc.session_context
    return context is None or context.destroyed


def _connected(doc: Any) -> bool:
    """Whether a browser is connected to the session (a page fetched but never opened has none)."""
    session = doc.session_context.session
    return session is not None and session.connection_count > 0


class Backlog:
    """Deferred builds of served sessions, lowest priority: one at a time
    (each on its own turn of the event loop, so requests and events get in
    between), in order of (rank, arrival), and only while every session that
    arrived lately has had its first paint (its browser reported the document
    ready) or waited :attr:`PATIENCE_S`, and none arrived in the last :attr:`QUIET_S`.
    The views of a session nobody is connected to (its tab closed, or a page
    fetched by a script) are parked until its browser reports ready."""

    QUIET_S = 0.15
    PATIENCE_S = 4.0

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Any, Callable[[], Any]]] = []
        self._seq = itertools.count()
        self._waiting: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # doc → arrival (monotonic s)
        self._parked: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # doc → its items, while nobody is connected
        self._last_arrival = 0.0
        self._scheduled = False
        self._loop: Any = None

    def arrived(self, doc: Any) -> None:
        """A session was built; its deferred work waits for its first paint."""
        self._waiting[doc] = self._last_arrival = time.monotonic()
        pn.state.onload(lambda: self.loaded(doc))

    def loaded(self, doc: Any) -> None:
        self._waiting.pop(doc, None)
        for item in self._parked.pop(doc, []):
            heapq.heappush(self._heap, item)
        self._kick()

    def add(self, doc: Any, rank: int, fn: Callable[[], Any]) -> None:
        from tornado.ioloop import IOLoop

        self._loop = self._loop or IOLoop.current()
        heapq.heappush(self._heap, (rank, next(self._seq), doc, fn))
        self._kick()

    def pending(self) -> int:
        return len(self._heap)

    def _kick(self, delay: float = 0.0) -> None:
        if not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_later(delay, self._step)

    def _step(self) -> None:
        self._scheduled = False
        now = time.monotonic()
        for doc, since in list(self._waiting.items()):
            if _gone(doc) or now - since > self.PATIENCE_S:
                self._waiting.pop(doc, None)
        while self._heap and _gone(self._heap[0][2]):
            heapq.heappop(self._heap)
        if not self._heap:
            return
        if len(self._waiting) or now - self._last_arrival < self.QUIET_S:
            self._kick(0.05)
            return
        item = heapq.heappop(self._heap)
        doc, fn = item[2], item[3]
        if not _connected(doc):  # closed, or never opened: its views wait until it is (loaded() brings them back)
            self._parked.setdefault(doc, []).append(item)
            self._kick()
            return
        self._scheduled = True  # the next step follows this build
        doc.add_next_tick_callback(lambda: self._run(fn))

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception as exc:  # fn shows its own failure; this is the last resort
            failure("a deferred view", exc)
        finally:
            self._scheduled = False
            self._kick()


BACKLOG = Backlog()


def defer(rank: int, fn: Callable[[], Any]) -> None:
    """Run ``fn`` now (not served) or from :data:`BACKLOG` (served)."""
    doc = served()
    if doc is None:
        fn()
    else:
        BACKLOG.add(doc, rank, fn)


_notices: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # doc → show(one line)


def register_notice(show: Callable[[str], None]) -> None:
    """Where the current served session shows a one-line failure."""
    doc = served()
    if doc is not None:
        _notices[doc] = show


def failure(what: str, exc: BaseException) -> str:
    """Log ``exc`` (traceback to the server's log) and return one line for the
    page: our own errors say what is wrong; anything else only its type, as
    its text may hold server paths."""
    if isinstance(exc, PerturberError):
        log.warning("%s: %s", what, one_line(exc))
        return one_line(exc)
    log.error("%s failed", what, exc_info=exc)
    return f"{what} failed ({type(exc).__name__}); the server's log has the details"


def handle_exception(exc: BaseException) -> None:
    """Panel's exception handler: the traceback to the log, one line to the page."""
    line = failure("a view", exc)
    doc = pn.state.curdoc
    show = _notices.get(doc) if doc is not None else None
    if show is not None:
        try:
            show(line)
        except Exception:  # the notice itself must never raise into Panel
            log.exception("showing a notice failed")
