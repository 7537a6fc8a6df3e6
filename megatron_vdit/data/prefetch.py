"""Batches read ahead by a worker process, resumable exactly.

The training step should not wait for shard reads and decoding: while step k runs, a
worker process reads batch k + 1 (on a GPU the main process then pins it, so the
step's host-to-device copy is asynchronous). A process, not a thread: reading a shard
is mostly Python (tar parsing, small-array decoding, shuffling, collating) and holds the
GIL, so a thread takes turns with the training loop instead of running beside it (measured:
a thread version of this module made a read-then-step loop 0.81x as fast on the 2-core
CPU; docs/benchmarks.md, "Latent precompute"). Batches cross the queue's pipe as numpy
bytes: for batches of latents that is cheaper than torch's per-tensor shared-memory
handover (with which the same loop ran at 0.55x).

Resuming stays exact: the worker sends, with each batch, the source's position right
after it, so `state_dict()` is the position after the last batch *returned* (not the
ones read ahead). `load_state_dict` stops the worker, drops what it read ahead and
starts the next one from that position.
"""
from __future__ import annotations

import copy
import queue
import time

import multiprocessing as mp

import torch

_POLL_S = 0.1


def _put(out, item, stop) -> bool:
    while not stop.is_set():
        try:
            out.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _to_numpy(batch: dict) -> dict:
    # Pickled as bytes through the queue's pipe: for batches of latents (kilobytes to a
    # few megabytes) that is cheaper than torch's shared-memory handover per tensor.
    return {k: ("tensor", v.numpy()) if torch.is_tensor(v) else ("other", v)
            for k, v in batch.items()}


def _from_numpy(batch: dict) -> dict:
    return {k: torch.from_numpy(v) if kind == "tensor" else v for k, (kind, v) in batch.items()}


def _worker(make_source, state, out, stop) -> None:
    torch.set_num_threads(1)  # decoding is serial; leave the cores to the step
    try:
        source = make_source()
        if state is not None:
            source.load_state_dict(state)
    except BaseException as error:
        _put(out, ("error", error, None), stop)
        stop.wait()
        return
    while not stop.is_set():
        try:
            item = ("ok", _to_numpy(source.next()), copy.deepcopy(source.state_dict()))
        except BaseException as error:  # raised in the consumer (StopIteration included)
            _put(out, ("error", error, None), stop)
            break
        if not _put(out, item, stop):
            return
    # Stay until told to stop: batches already sent are handed over through this
    # process's file descriptors, so it must outlive their unpickling.
    stop.wait()


class Prefetcher:
    """`make_source()` (picklable; called in the worker) returns an object with `next()
    -> dict`, `state_dict()` and `load_state_dict(state)`; this has the same three."""

    def __init__(self, make_source, pin_memory: bool | None = None, depth: int = 1):
        self.make_source = make_source
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.depth = depth
        self._state = None          # None: the source's own start
        self._process = None

    def _start(self) -> None:
        ctx = mp.get_context("fork")  # the worker needs nothing but the reader's code
        self._queue = ctx.Queue(maxsize=self.depth)
        self._stop = ctx.Event()
        self._process = ctx.Process(target=_worker, name="batch-prefetch", daemon=True,
                                    args=(self.make_source, self._state, self._queue,
                                          self._stop))
        self._process.start()

    def next(self) -> dict:
        if self._process is None:
            self._start()
        while True:
            try:
                kind, payload, state = self._queue.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self._process.is_alive():
                    code = self._process.exitcode
                    self.close()
                    raise RuntimeError(f"the batch-reading worker died (exit code {code})")
        if kind == "error":
            self.close()
            raise payload
        self._state = state
        payload = _from_numpy(payload)
        if self.pin_memory:
            payload = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in payload.items()}
        return payload

    def state_dict(self) -> dict:
        """Position after the last batch `next()` returned (the source's start before
        the first: read from a fresh source)."""
        if self._state is None:
            return copy.deepcopy(self.make_source().state_dict())
        return copy.deepcopy(self._state)

    def close(self) -> None:
        """Stop the worker and drop what it read ahead."""
        if self._process is None:
            return
        self._stop.set()
        deadline = time.monotonic() + 10
        while self._process.is_alive() and time.monotonic() < deadline:
            try:  # what it read ahead, so its queue can flush and it can exit
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
            except (OSError, EOFError):  # a dropped batch whose sender already left
                pass
            self._process.join(timeout=0.05)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()
        self._queue.close()
        self._queue.join_thread()
        self._process = None

    def load_state_dict(self, state: dict) -> None:
        self.close()
        self._state = copy.deepcopy(state)
