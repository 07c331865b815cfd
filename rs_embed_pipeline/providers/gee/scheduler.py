"""Every slot busy: the work queue of one ``fetch_patches`` call.

The fetch is a set of *roots* (request blocks) whose work is *tasks*: callables that make at most
one Earth Engine request and then say what follows through their :class:`Context`: ``submit``
(more work now: the halves of a split, the pixel requests after a block's scene query),
``later`` (a retry after its backoff) or ``emit`` (finished patches for the consumer).

- **Slots only around the HTTP call.** Tasks take a slot of the provider's limiter for their one
  request only, so decoding and cutting an answer, waiting for the consumer or sleeping in a
  backoff never holds a slot; there are more worker threads than slots (``workers``), so a free
  slot finds a thread while others decode.
- **Backoffs hold no thread.** ``later`` puts the task on a timer (one thread per fetch); when its
  delay has passed it goes back to the front of the queue, and takes a slot like any request.
- **Splits run in parallel.** The halves of a split are two tasks, in two slots.
- **Bounded buffering.** A root is *open* from its first task until its last task has finished
  and the consumer has taken every patch it emitted; a new root starts only while fewer than
  ``max_open`` are open. With ``max_open = 2 x slots``, the slots stay full as long as fewer than
  ``slots`` roots' patches wait for the consumer; a slower consumer stops new requests there, so
  at most ``2 x slots`` roots' answers (each under 48 MiB) are in memory.

Time: ``clock`` and ``sleep`` are the provider's. With the real ``time.sleep`` the timer waits on
an event (a nearer deadline wakes it); an injected ``sleep`` (tests' fake clock) is called with
each remaining delay and returns at once, so backoff delays are asserted exactly, never timed.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

Task = Callable[["Context"], None]


class _Root:
    """One root's open work: tasks queued, delayed or running, and patches not yet taken."""

    __slots__ = ("pending", "unconsumed")

    def __init__(self) -> None:
        self.pending = 0
        self.unconsumed = 0


class Context:
    """What a running task may do (bound to its root)."""

    __slots__ = ("_root", "_sched")

    def __init__(self, sched: RequestScheduler, root: _Root) -> None:
        self._sched = sched
        self._root = root

    def submit(self, task: Task) -> None:
        """Run ``task`` next (behind earlier follow-ups, before any new root)."""
        self._sched._push(self._root, task, None)

    def later(self, task: Task, delay_s: float) -> None:
        """Run ``task`` once ``delay_s`` seconds have passed; no thread or slot waits meanwhile."""
        self._sched._push(self._root, task, float(delay_s))

    def emit(self, items: Iterable[Any]) -> None:
        """Hand finished results to the consumer."""
        self._sched._emit(self._root, list(items))


class RequestScheduler:
    """Runs the tasks of ``roots`` on ``workers`` threads, at most ``max_open`` roots open at
    once; :meth:`run` yields what they emit, in completion order."""

    def __init__(self, workers: int, max_open: int, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, name: str = "gee-fetch") -> None:
        if workers < 1 or max_open < 1:
            raise ValueError("workers and max_open must be >= 1")
        self.workers = int(workers)
        self.max_open = int(max_open)
        self._clock = clock
        self._sleep = sleep
        self._interruptible = sleep is time.sleep  # the real clock: wait on an event instead
        self._name = name
        # one lock, three queues of waiters: workers, the consumer, the timer (a notify reaches
        # the kind of thread it is meant for)
        self._lock = threading.Lock()
        self._work_cv = threading.Condition(self._lock)
        self._out_cv = threading.Condition(self._lock)
        self._timer_cv = threading.Condition(self._lock)
        self._ready: collections.deque[tuple[_Root, Task]] = collections.deque()
        # (due, seq, delay, scheduled at, root, task): seq keeps equal deadlines in order
        self._delayed: list[tuple[float, int, float, float, _Root, Task]] = []
        self._seq = itertools.count()
        self._wake = threading.Event()
        self._out: collections.deque[tuple[_Root, Any]] = collections.deque()
        self._roots: Iterator[Task] = iter(())
        self._roots_done = False
        self._open = 0
        self._running = 0
        self._closed = False
        self._error: BaseException | None = None
        self.max_open_seen = 0

    # ---- the consumer's side --------------------------------------------------------------------

    def run(self, roots: Iterable[Task]) -> Iterator[Any]:
        """Yield every emitted result; on close (or an error) stop: tasks not started are dropped,
        running ones finish their request. A task's exception is raised here."""
        self._roots = iter(roots)
        threads = [threading.Thread(target=self._work, name=f"{self._name}-{i}", daemon=True)
                   for i in range(self.workers)]
        threads.append(threading.Thread(target=self._timer, name=f"{self._name}-timer", daemon=True))
        for t in threads:
            t.start()
        try:
            while True:
                with self._lock:
                    while not self._out and not self._finished():
                        self._out_cv.wait()
                    if self._error is not None:
                        raise self._error
                    if not self._out:
                        return
                    root, item = self._out.popleft()
                yield item
                with self._lock:  # the consumer came back: that patch is taken
                    root.unconsumed -= 1
                    self._maybe_close(root)
        finally:
            with self._lock:
                self._closed = True
                self._ready.clear()
                self._delayed.clear()
                self._work_cv.notify_all()
                self._timer_cv.notify_all()
            self._wake.set()
            for t in threads:
                t.join()

    def _finished(self) -> bool:
        return (self._error is not None or (self._roots_done and not self._ready and not self._delayed
                                            and self._running == 0))

    # ---- the tasks' side ------------------------------------------------------------------------

    def _push(self, root: _Root, task: Task, delay_s: float | None) -> None:
        with self._lock:
            if self._closed:
                return
            root.pending += 1
            if delay_s is None or delay_s <= 0:
                self._ready.append((root, task))
                self._work_cv.notify()
                return
            now = self._clock()
            entry = (now + delay_s, next(self._seq), delay_s, now, root, task)
            earliest = not self._delayed or entry[:2] < self._delayed[0][:2]
            heapq.heappush(self._delayed, entry)
            self._timer_cv.notify()
        if earliest:
            self._wake.set()

    def _emit(self, root: _Root, items: list[Any]) -> None:
        with self._lock:
            root.unconsumed += len(items)
            self._out.extend((root, item) for item in items)
            self._out_cv.notify()

    def _maybe_close(self, root: _Root) -> None:
        """(lock held) A root with no work left and every patch taken frees its place."""
        if root.pending == 0 and root.unconsumed == 0:
            root.pending = -1  # closed once
            self._open -= 1
            self._work_cv.notify()  # room for one more root

    def _next_task(self) -> tuple[_Root, Task] | None:
        """(lock held) A follow-up first, else a new root if one may open; None: nothing now."""
        if self._ready:
            return self._ready.popleft()
        if self._roots_done or self._open >= self.max_open:
            return None
        task = next(self._roots, None)
        if task is None:
            self._roots_done = True
            self._out_cv.notify()
            return None
        root = _Root()
        root.pending = 1
        self._open += 1
        self.max_open_seen = max(self.max_open_seen, self._open)
        return root, task

    def _work(self) -> None:
        while True:
            with self._lock:
                while True:
                    if self._closed:
                        return
                    picked = self._next_task()
                    if picked is not None:
                        break
                    self._work_cv.wait()
                self._running += 1
            root, task = picked
            try:
                task(Context(self, root))
            except BaseException as exc:  # the provider's tasks catch their own; this is a bug
                with self._lock:
                    if self._error is None:
                        self._error = exc
            finally:
                with self._lock:
                    self._running -= 1
                    root.pending -= 1
                    self._maybe_close(root)
                    self._out_cv.notify()  # the consumer checks whether the fetch is finished

    def _timer(self) -> None:
        """Moves delayed tasks to the queue when their delay has passed."""
        while True:
            with self._lock:
                while not self._delayed and not self._closed:
                    self._wake.clear()
                    self._timer_cv.wait()
                if self._closed:
                    return
                due, _, delay, since, _, _ = self._delayed[0]
                remaining = delay - (self._clock() - since)
                if remaining <= 0:
                    self._release_first()
                    continue
                self._wake.clear()
            if self._interruptible:
                if self._wake.wait(remaining):
                    continue  # an earlier deadline or the close: look again
            else:
                self._sleep(remaining)
            with self._lock:
                # it has waited its delay (a fake clock may not have moved): due now
                if self._delayed and self._delayed[0][0] <= due:
                    self._release_first()

    def _release_first(self) -> None:
        """(lock held) The earliest delayed task goes to the front of the queue."""
        _, _, _, _, root, task = heapq.heappop(self._delayed)
        self._ready.appendleft((root, task))
        self._work_cv.notify()
