"""The agent hands a stage's batches to a task of their own (``WorkerService.drain_soon``), so it
goes on taking runs while a batch is processed, flushed and committed: no request to drain is lost
or run twice at once, a batch that fails is counted, its runs released and its partitions re-read,
and shutdown stops the task before the sinks close."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from stream.settings import Settings
from stream.worker.service import WorkerService


def service_with_fake_drain(fail: BaseException | None = None):
    svc = WorkerService(None, Settings(), lambda st: None)
    calls, running, release = [], [], asyncio.Event()

    async def drain(name: str, force: bool = False) -> None:
        running.append(name)
        assert running.count(name) == 1, "two batches of one stage at once"
        calls.append(name)
        await release.wait()
        running.remove(name)
        if fail is not None:
            raise fail

    svc.drain = drain
    return svc, calls, release


def test_asked_while_a_batch_runs_it_drains_once_more_after_it():
    async def go():
        svc, calls, release = service_with_fake_drain()
        svc.drain_soon("predict")  # returns at once: the agent takes its next run meanwhile
        await asyncio.sleep(0)
        assert calls == ["predict"]
        for _ in range(3):  # three runs arrive while the batch commits: one more drain, not three
            svc.drain_soon("predict")
        svc.drain_soon("warm")  # the other stage has a task of its own
        await asyncio.sleep(0)
        assert calls == ["predict", "warm"]
        release.set()
        for _ in range(10):
            await asyncio.sleep(0)
        assert calls == ["predict", "warm", "predict"]
        assert all(t.done() for t in svc._draining.values())
        svc.drain_soon("predict")  # idle again: a new request runs a new task
        await asyncio.sleep(0)
        assert calls == ["predict", "warm", "predict", "predict"]

    asyncio.run(go())


def test_a_failed_batch_is_counted_and_its_partitions_are_read_again():
    async def go():
        svc, _, release = service_with_fake_drain(fail=TypeError("a record no check foresaw"))
        relocated = []

        async def relocate(stage, partitions, applied):
            relocated.append((stage.name, partitions, applied))

        svc.relocate = relocate
        svc.built = SimpleNamespace(stages={"predict": SimpleNamespace(name="predict", runtimes={1: None, 0: None})})
        svc._at["predict"] = (1, 4200)
        release.set()
        svc.drain_soon("predict")
        for _ in range(10):
            await asyncio.sleep(0)
        assert svc.health.crashes["predict"][0] == 1
        assert "partition 1 offset 4200: TypeError" in svc.health.crashes["predict"][1]
        assert relocated == [("predict", [0, 1], {})]

    asyncio.run(go())


def test_shutdown_stops_a_running_batch_before_the_sinks_close():
    async def go():
        svc, calls, _ = service_with_fake_drain()
        svc.drain_soon("predict")
        await asyncio.sleep(0)
        task = svc._draining["predict"]
        assert calls == ["predict"] and not task.done()
        await svc.close_sinks()
        assert task.cancelled()

    asyncio.run(go())


def test_shutdown_stops_a_batch_the_deadline_timer_cut_before_the_sinks_close():
    async def go():
        svc, calls, _ = service_with_fake_drain()
        closed = []

        class Sink:
            async def close(self):
                closed.append(task.cancelled())  # the batch had stopped by then

        svc.built = SimpleNamespace(stages={"predict": SimpleNamespace(checkpoint=SimpleNamespace(sinks={"s": Sink()}))})
        svc.spawn("predict", lambda: svc.drain("predict", force=True))  # as cut_overdue_batches does
        await asyncio.sleep(0)
        task = svc._cutting["predict"]
        assert calls == ["predict"] and not task.done()
        await svc.close_sinks()
        assert task.cancelled() and closed == [True]

    asyncio.run(go())


def test_a_batch_that_fails_releases_its_runs_to_faust():
    """Not left unacknowledged: faust waits for every delivered run at a rebalance. The crash's
    recovery reads them again from Redis's offsets."""
    class Run:
        acked = False

        def ack(self):
            self.acked = True

    async def go():
        svc = WorkerService(None, Settings(), lambda st: None)
        stage = SimpleNamespace(name="warm", topic="entries", forward=None, runtimes={0: SimpleNamespace()})
        svc.built = SimpleNamespace(stages={"warm": stage})

        async def apply(stage, work, lagging=frozenset()):
            assert [len(records) for _, records in work] == [3]
            raise TypeError("a record no check foresaw")

        svc.apply = apply
        run = Run()
        svc.schedulers["warm"].add(0, run, [(0, b"a"), (1, b"b"), (2, b"c")])
        with pytest.raises(TypeError):
            await svc.drain("warm")
        assert run.acked

    asyncio.run(go())
