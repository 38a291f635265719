"""POST /predict in micro-batches: the requests that arrive while one batch is scored wait for
the next, which reads Redis once per partition and scores with one matrix product
(``Worker.predict_many``). 200 concurrent callers, each scored alone in the stream's thread pool,
queued behind each other and the batches (p99 2 s); batched in a thread of their own, a request
costs its share of one round trip and the stream only the requests' own CPU time."""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

MAX_BATCH = 256


class PredictBatcher:
    def __init__(self, predict_many: Callable[[list[tuple[int, str]]], list[dict]], max_batch: int = MAX_BATCH):
        self.predict_many = predict_many
        self.max_batch = max_batch
        self.pending: list[tuple[int, str, asyncio.Future]] = []
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="skipcache-predict")
        self._running: asyncio.Task | None = None
        self.batches = 0

    async def predict(self, user_id: int, track_id: str) -> dict:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((user_id, track_id, future))
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pending:
            await asyncio.sleep(0)  # let the requests already read join this batch
            batch, self.pending = self.pending[:self.max_batch], self.pending[self.max_batch:]
            try:
                results = await loop.run_in_executor(self.executor, self.predict_many, [(u, t) for u, t, _ in batch])
            except Exception as exc:  # e.g. Redis away: every caller gets the error (a 503)
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            for (_, _, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)

    def close(self) -> None:
        self.executor.shutdown(wait=False)
