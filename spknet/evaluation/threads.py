"""Parallel Python threads for small torch operations, without changing anyone's thread count."""

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch


@contextmanager
def single_threaded_pool(threads: int) -> Iterator[ThreadPoolExecutor]:
    """A pool of ``threads`` Python threads whose torch operations each run on one intra-op thread.

    Many small operations in parallel threads (torch releases the GIL) keep the cores busier than intra-op
    parallelism, whose synchronisation costs more than it gains on small operations (and many times more on a
    busy machine). ``torch.set_num_threads`` in a pool thread also sets the count that threads started later begin
    with, so when the block ends the pool is shut down and the caller's count is set again: the caller, and any
    thread started after the block, has the count the caller had before it.
    """
    previous = torch.get_num_threads()
    pool = ThreadPoolExecutor(threads, initializer=torch.set_num_threads, initargs=(1,))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(previous)
