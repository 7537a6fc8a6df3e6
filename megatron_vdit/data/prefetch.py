"""One-batch-ahead prefetch of a batch source in a background thread, resumable exactly.

The training step should not wait for shard reads and decoding: while step k runs,
a thread reads batch k + 1 (and, on a GPU, copies it into pinned host memory, so the
step's host-to-device copy is asynchronous). Reading a shard is file I/O and numpy
decoding, which release the GIL, so a thread overlaps it with the step.

Resuming stays exact: the thread records the source's position right after each batch
it reads and hands it over with the batch, so `state_dict()` is the position after the
last batch *returned* (not the one read ahead). `load_state_dict` stops the thread,
drops the batch read ahead and repositions the source; the next `next()` starts again.
"""
from __future__ import annotations

import copy
import queue
import threading

import torch


class Prefetcher:
    """Wraps a source with `next() -> dict of tensors`, `state_dict()`, `load_state_dict()`."""

    def __init__(self, source, pin_memory: bool | None = None, depth: int = 1):
        self.source = source
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.depth = depth
        self._state = copy.deepcopy(source.state_dict())
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()

    def _run(self, out: queue.Queue, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                batch = self.source.next()
                if self.pin_memory:
                    batch = {k: v.pin_memory() if torch.is_tensor(v) else v
                             for k, v in batch.items()}
                item = ("ok", batch, copy.deepcopy(self.source.state_dict()))
            except BaseException as error:  # handed to the consumer, raised there
                item = ("error", error, None)
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item[0] == "error":
                return

    def _start(self) -> None:
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.depth)
        self._thread = threading.Thread(target=self._run, args=(self._queue, self._stop),
                                        name="batch-prefetch", daemon=True)
        self._thread.start()

    def next(self) -> dict:
        if self._thread is None:
            self._start()
        kind, payload, state = self._queue.get()
        if kind == "error":
            self.close()
            raise payload
        self._state = state
        return payload

    def state_dict(self) -> dict:
        """Position after the last batch `next()` returned."""
        return copy.deepcopy(self._state)

    def close(self) -> None:
        """Stop the thread and drop what it read ahead (the source is left past it:
        `load_state_dict` repositions it)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread, self._queue = None, None

    def load_state_dict(self, state: dict) -> None:
        self.close()
        self.source.load_state_dict(state)
        self._state = copy.deepcopy(state)
