"""Writing rows off the dispatch loop: one background thread, a bounded queue.

    writer = RowWriter(store.write_many)
    writer.put(record)        # returns at once; blocks only when `max_pending` rows wait
    writer.close()            # every row put is written (or the write error is raised)

The thread takes whatever rows are waiting when it is free and hands them to the sink in one
call, in the order they were put; under a slow trickle of cells that is one row per call, under a
flood of short cells the rows batch up and the disk keeps pace. A failed write stops the writer:
the error is raised by the next `put` or by `close`, in the driver's thread, with its own type
(e.g. StorageError), and rows put after it are not written.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

MAX_PENDING = 4096
MAX_BATCH = 256
_PUT_TICK_S = 0.5
_STOP = object()




class RowWriter:
    """Hands rows to `sink(rows)` on a background thread (see the module docstring)."""

    def __init__(
        self,
        sink: Callable[[list[dict]], None],
        *,
        max_pending: int = MAX_PENDING,
        max_batch: int = MAX_BATCH,
    ):
        self._sink = sink
        self._max_batch = max_batch
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._closed = False
        self.written = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="row-writer", daemon=True)
        self._thread.start()

    def put(self, row: dict) -> None:
        """Queue one row; raises the writer's error if a write failed."""
        if self._closed:
            raise RuntimeError("RowWriter.put after close")
        while True:
            self._raise_error()
            try:  # a timeout, so a failed writer (which stops reading) cannot block us forever
                self._queue.put(row, timeout=_PUT_TICK_S)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Write every queued row, stop the thread; raise the first write error, if any.
        A Ctrl-C while waiting does not abandon the rows: the wait goes on, then it re-raises."""
        if not self._closed:
            self._closed = True
            self._put_stop()
        interrupted = None
        while not self._done.is_set():  # (an interrupted Thread.join can lose track of it)
            try:
                self._done.wait()
            except KeyboardInterrupt as e:  # rows of finished cells are still being written
                log.warning("still writing %d finished row(s)", self._queue.qsize())
                interrupted = e
        self._raise_error()
        if interrupted is not None:
            raise interrupted

    def _put_stop(self) -> None:
        while not self._done.is_set():
            try:
                self._queue.put(_STOP, timeout=_PUT_TICK_S)
                return
            except queue.Full:
                continue

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _loop(self) -> None:
        try:
            self._drain_queue()
        finally:
            self._done.set()

    def _drain_queue(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = batch[-1] is _STOP
            rows = [r for r in batch if r is not _STOP]
            if rows and self._error is None:
                try:
                    self._sink(rows)
                    self.written += len(rows)
                except BaseException as e:  # handed to the driver's thread
                    log.debug("writing %d row(s) failed", len(rows), exc_info=True)
                    self._error = e
            if stop:
                return
