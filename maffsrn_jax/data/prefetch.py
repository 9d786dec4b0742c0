"""`train_iterator`: the sampler's batches for consecutive steps, computed ahead on threads."""

from __future__ import annotations

import atexit
import functools
import threading
import weakref
from collections.abc import Callable, Iterator

from maffsrn_jax.data.sampler import PairDataset, batch_at


class _PrefetchState:
    """What the worker threads share; kept apart from the iterator so it can be collected."""

    def __init__(self, make_batch: Callable[[int], dict], start_step: int, prefetch: int):
        self.make_batch = make_batch
        self.prefetch = max(prefetch, 1)
        self.next_claim = self.next_yield = start_step
        self.ready: dict[int, dict] = {}
        self.error: BaseException | None = None
        self.closed = False
        self.cond = threading.Condition()

    def work(self) -> None:
        while True:
            with self.cond:
                while (not self.closed and self.error is None
                       and self.next_claim - self.next_yield >= self.prefetch):
                    self.cond.wait()
                if self.closed or self.error is not None:
                    return
                step = self.next_claim
                self.next_claim += 1
            try:
                batch = self.make_batch(step)
            except BaseException as e:  # Re-raised in the consumer, in order.
                with self.cond:
                    self.error = e
                    self.cond.notify_all()
                return
            with self.cond:
                if self.closed:
                    return
                self.ready[step] = batch
                self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.ready.clear()
            self.cond.notify_all()


_LIVE_ITERATORS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_live_iterators() -> None:
    for it in list(_LIVE_ITERATORS):
        it.close()


class _BatchIterator(Iterator[dict]):
    """Yields `make_batch(step)` for consecutive steps, computed ahead on daemon threads."""

    def __init__(self, make_batch: Callable[[int], dict], start_step: int, num_threads: int,
                 prefetch: int):
        self._state = _PrefetchState(make_batch, start_step, prefetch)
        self._threads = [
            threading.Thread(target=self._state.work, name=f"maffsrn-data-{i}", daemon=True)
            for i in range(num_threads)
        ]
        for t in self._threads:
            t.start()
        _LIVE_ITERATORS.add(self)

    def __next__(self) -> dict:
        st = self._state
        if not self._threads:  # num_threads=0: compute in the caller's thread.
            if st.closed:
                raise StopIteration
            st.next_yield += 1
            return st.make_batch(st.next_yield - 1)
        with st.cond:
            while st.closed or st.next_yield not in st.ready:
                if st.closed:
                    raise StopIteration
                if st.error is not None:
                    raise st.error
                st.cond.wait()
            batch = st.ready.pop(st.next_yield)
            st.next_yield += 1
            st.cond.notify_all()
        return batch

    def close(self) -> None:
        """Stops the workers (each finishes at most the batch it is computing)."""
        self._state.close()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=10)

    def __enter__(self) -> _BatchIterator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self._state.close()


def train_iterator(
    dataset: PairDataset,
    *,
    start_step: int,
    seed: int,
    global_batch_size: int,
    patch_size: int,
    scale: int,
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int = 2,
    prefetch: int = 4,
) -> _BatchIterator:
    """`batch_at(dataset, step, ...)` for step = start_step, start_step + 1, ... in order.

    Batches are computed on `num_threads` daemon threads (0: in the caller's thread), at most
    `prefetch` ahead of the consumer. Call `close()` (or use it as a context manager) to stop
    the threads early; exiting the interpreter never waits on them.
    """
    make = functools.partial(
        batch_at, dataset, seed=seed, global_batch_size=global_batch_size, patch_size=patch_size,
        scale=scale, process_index=process_index, process_count=process_count)
    make(start_step)  # Fails now, in the caller, on arguments batch_at would reject.
    return _BatchIterator(make, start_step, num_threads, prefetch)
