"""The job store contract, on SQLite and on PostgreSQL: queue order, batch claiming, cancel, deadlines,
lease recovery, persistence, concurrent claims."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.store import Job, JobStore, LogEntry, PipelineState, SQLiteJobStore, open_store
from server.store.base import HISTOGRAM_BUCKETS
from server.store.postgres import PostgresJobStore
from tests.support.sqlite_writer import hold_the_write_lock


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    return request.getfixturevalue("postgres_url")


class FakeClock:
    """Wall-clock seconds that move only when a test says so (no sleeps, no races with a slow machine)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(store_url: str, clock: FakeClock) -> Iterator[JobStore]:
    if store_url.startswith("sqlite:///"):
        store: JobStore = SQLiteJobStore(store_url.removeprefix("sqlite:///"), clock=clock)
    else:
        store = PostgresJobStore(store_url, clock=clock)
    yield store
    store.close()


def make(store: JobStore, n: int, *, priority: str = "normal", key: int = 0, t0: float = 1000.0) -> list[Job]:
    jobs = []
    for i in range(n):
        job = Job(id=f"{priority}-{key}-{i}-{t0}", endpoint="a/b", input={"k": key}, priority=priority,  # type: ignore[arg-type]
                  created_at=t0 + i)  # fmt: skip
        store.create(job)
        jobs.append(job)
    return jobs


def by_key(inp: dict) -> int:
    return inp["k"]


def test_normal_priority_before_low_and_fifo_within(store: JobStore) -> None:
    low = make(store, 2, priority="low", t0=100.0)
    normal = make(store, 2, priority="normal", t0=200.0)
    assert store.queue_position(normal[0]) == 0
    assert store.queue_position(normal[1]) == 1
    assert store.queue_position(low[0]) == 2
    order = [store.claim_batch("a/b", "w", by_key, 1, 30)[0].id for _ in range(4)]
    assert order == [normal[0].id, normal[1].id, low[0].id, low[1].id]
    assert store.claim_batch("a/b", "w", by_key, 1, 30) == []


def test_batch_claims_only_the_head_key_up_to_max_batch(store: JobStore) -> None:
    a = make(store, 3, key=1, t0=10.0)
    b = make(store, 2, key=2, t0=20.0)
    first = store.claim_batch("a/b", "w", by_key, 2, 30)
    assert [j.id for j in first] == [a[0].id, a[1].id]
    second = store.claim_batch("a/b", "w", by_key, 8, 30)
    assert [j.id for j in second] == [a[2].id]
    third = store.claim_batch("a/b", "w", by_key, 8, 30)
    assert sorted(j.id for j in third) == sorted(j.id for j in b)
    assert all(store.get(j.id).status == "IN_PROGRESS" for j in a + b)


def test_cancel_queued_is_immediate_running_is_requested_completed_is_refused(store: JobStore) -> None:
    queued, running = make(store, 2)
    assert store.claim_batch("a/b", "w", by_key, 1, 30)[0].id == queued.id
    # `queued` is now running; make a fresh queued job
    (fresh,) = make(store, 1, t0=5000.0)
    assert store.request_cancel(fresh.id) == "CANCELLATION_REQUESTED"
    got = store.get(fresh.id)
    assert got.status == "COMPLETED" and got.error["error_type"] == "request_cancelled"
    assert store.request_cancel(queued.id) == "CANCELLATION_REQUESTED"
    assert store.get(queued.id).status == "IN_PROGRESS"
    assert store.is_cancel_requested([queued.id, running.id]) == {queued.id}
    assert store.request_cancel(fresh.id) == "ALREADY_COMPLETED"
    assert store.request_cancel("nope") == "NOT_FOUND"


def test_complete_only_once(store: JobStore) -> None:
    (job,) = make(store, 1)
    assert not store.complete(job.id, result={"x": 1})  # not claimed yet
    store.claim_batch("a/b", "w", by_key, 1, 30)
    assert store.complete(job.id, result={"x": 1}, metrics={"batch_size": 1})
    assert not store.complete(job.id, result={"x": 2})
    got = store.get(job.id)
    assert got.result == {"x": 1} and got.metrics == {"batch_size": 1}


def test_start_deadline_expires_queued_jobs(store: JobStore, clock: FakeClock) -> None:
    job = Job(id="d", endpoint="a/b", input={"k": 0}, start_deadline=clock() - 1)
    keep = Job(id="k", endpoint="a/b", input={"k": 0}, start_deadline=clock() + 60)
    store.create(job)
    store.create(keep)
    assert store.expire_deadlines() == ["d"]
    assert store.get("d").error["error_type"] == "request_timeout"
    assert store.get("k").status == "IN_QUEUE"


def test_expired_lease_requeues_once_then_fails(store: JobStore) -> None:
    (job,) = make(store, 1)
    store.claim_batch("a/b", "w1", by_key, 1, lease_s=-1)  # lease already expired: the worker "died"
    assert store.start([job.id], "w1") == [job.id]
    assert store.recover_expired_leases(max_attempts=2) == [job.id]
    assert store.get(job.id).status == "IN_QUEUE"
    store.claim_batch("a/b", "w2", by_key, 1, lease_s=-1)
    store.start([job.id], "w2")
    store.recover_expired_leases(max_attempts=2)
    got = store.get(job.id)
    assert got.status == "COMPLETED" and got.error["error_type"] == "runner_disconnected"
    assert got.attempts == 2


def test_heartbeat_keeps_lease(store: JobStore, clock: FakeClock) -> None:
    (job,) = make(store, 1)
    store.claim_batch("a/b", "w", by_key, 1, lease_s=0.2)
    store.start([job.id], "w")
    store.heartbeat([job.id], lease_s=60)
    clock.advance(30)  # past the first lease, within the renewed one
    assert store.recover_expired_leases(max_attempts=2) == []
    clock.advance(31)  # no heartbeat for the whole renewed lease: the worker is taken for dead
    assert store.recover_expired_leases(max_attempts=2) == [job.id]


def test_logs_in_order_and_incremental(store: JobStore) -> None:
    (job,) = make(store, 1)
    for i in range(5):
        store.append_log(job.id, LogEntry(f"line {i}"))
    assert [e.message for e in store.logs(job.id)] == [f"line {i}" for i in range(5)]
    assert [e.message for e in store.logs(job.id, since=3)] == ["line 3", "line 4"]


def test_jobs_survive_reopen(store_url: str) -> None:
    store = open_store(store_url)
    make(store, 3)
    store.close()
    again = open_store(store_url)
    assert again.queue_depths() == {"a/b": 3}
    again.close()


def _claim_all(url: str, worker: str, out: mp.Queue) -> None:
    store = open_store(url)
    claimed = []
    while batch := store.claim_batch("a/b", worker, by_key, 3, 30):
        claimed += [j.id for j in batch]
    out.put(claimed)


def test_concurrent_workers_never_claim_a_job_twice(store: JobStore, store_url: str) -> None:
    ids = {j.id for j in make(store, 120)}
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(store_url, f"w{i}", out)) for i in range(3)]
    for p in procs:
        p.start()
    claimed = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    flat = [i for c in claimed for i in c]
    assert len(flat) == len(set(flat)) == len(ids)
    assert set(flat) == ids


def test_claimed_but_unstarted_jobs_cost_no_attempt_and_can_be_released(store: JobStore) -> None:
    a, b = make(store, 2)
    store.claim_batch("a/b", "w", by_key, 2, lease_s=-1)  # a prefetch whose worker died before running it
    for _ in range(3):  # re-queued as often as it happens: never ran, never failed
        assert sorted(store.recover_expired_leases(max_attempts=2)) == sorted([a.id, b.id])
        assert store.get(a.id).status == "IN_QUEUE" and store.get(a.id).attempts == 0
        store.claim_batch("a/b", "w", by_key, 2, lease_s=-1)
    store.release([a.id, b.id], "other-worker")  # not theirs: nothing happens
    assert store.get(a.id).status == "IN_PROGRESS"
    store.release([a.id, b.id], "w")
    assert store.queue_depths() == {"a/b": 2}


def test_start_expires_a_prefetched_job_past_its_deadline(store: JobStore, clock: FakeClock) -> None:
    late = Job(id="late", endpoint="a/b", input={"k": 0}, start_deadline=clock() + 0.2)
    store.create(late)
    store.claim_batch("a/b", "w", by_key, 1, 30)
    clock.advance(0.3)
    assert store.start(["late"], "w") == []
    assert store.get("late").error["error_type"] == "request_timeout"
    # an expired queued job is not claimable (it is left for expire_deadlines)
    store.create(Job(id="gone", endpoint="a/b", input={"k": 0}, start_deadline=clock() - 1))
    assert store.claim_batch("a/b", "w", by_key, 1, 30) == []


def test_only_the_owning_worker_completes_or_heartbeats(store: JobStore) -> None:
    (job,) = make(store, 1)
    store.claim_batch("a/b", "w1", by_key, 1, lease_s=-1)
    store.start([job.id], "w1")
    store.recover_expired_leases(max_attempts=3)  # w1 stalled: re-queued
    store.claim_batch("a/b", "w2", by_key, 1, 30)
    store.start([job.id], "w2")
    store.heartbeat([job.id], 0.01, worker_id="w1")  # the stale worker cannot shorten w2's lease
    assert store.recover_expired_leases(max_attempts=3) == []
    assert not store.complete(job.id, result={"by": "w1"}, worker_id="w1")
    assert store.complete(job.id, result={"by": "w2"}, worker_id="w2")
    assert store.get(job.id).result == {"by": "w2"}


def test_running_jobs_per_api_key_are_capped_and_the_rest_wait_in_order(store: JobStore) -> None:
    for i, key in enumerate(["A", "A", "B", "A", None]):
        store.create(Job(id=f"{key}{i}", endpoint="a/b", input={"k": 0}, key_id=key, created_at=100.0 + i))
    first = store.claim_batch("a/b", "w", by_key, 8, 30, max_running_per_key=1)
    assert [j.id for j in first] == ["A0", "B2", "None4"]  # one per key; jobs without a key are not capped
    assert store.claim_batch("a/b", "w", by_key, 8, 30, max_running_per_key=1) == []
    store.start(["A0"], "w")
    assert store.complete("A0", result={}, worker_id="w")
    assert [j.id for j in store.claim_batch("a/b", "w", by_key, 8, 30, max_running_per_key=1)] == ["A1"]
    assert store.queue_depths() == {"a/b": 1}  # A3 still queued, never refused


def test_worker_metrics_replace_gauges_and_sum_histograms_over_workers(store: JobStore) -> None:
    store.set_worker_metrics("w1", {("rows", "a/b"): 3.0}, {("wait", "a/b"): ([1, 2], 0.5, 2)})
    store.set_worker_metrics("w1", {("rows", "a/b"): 4.0}, {("wait", "a/b"): ([2, 3], 0.9, 3)})  # cumulative
    store.set_worker_metrics("w2", {("rows", "a/b"): 1.0}, {("wait", "a/b"): ([0, 1], 0.1, 1)})
    assert sorted(store.worker_gauges()) == [("w1", "rows", "a/b", 4.0), ("w2", "rows", "a/b", 1.0)]
    ((endpoint, counts, total, n),) = store.worker_histograms("wait")
    assert (endpoint, counts, n) == ("a/b", [2, 4], 4) and total == pytest.approx(1.0)


def test_queued_ids_in_claim_order_and_claims_that_must_match_a_step_key(store: JobStore) -> None:
    low = make(store, 1, priority="low", key=2, t0=10.0)
    normal = make(store, 2, key=1, t0=20.0)
    assert store.queued_ids("a/b", 10) == [normal[0].id, normal[1].id, low[0].id]
    assert store.claim_batch("a/b", "w", by_key, 8, 30, key=2) == []  # the head has key 1: no claim around it
    assert [j.id for j in store.claim_batch("a/b", "w", by_key, 8, 30, key=1)] == [j.id for j in normal]


# -- recovery, retention and counters (issue #11; both stores) ---------------------------------------------


def _sql(store: JobStore, statement: str) -> None:
    """Run one SQL statement (same text in both dialects) to stage a state the contract cannot reach."""
    if isinstance(store, SQLiteJobStore):
        with store._write() as db:
            db.execute(statement)
    else:
        assert isinstance(store, PostgresJobStore)
        with store.pool.connection() as conn:
            conn.execute(statement)


def test_release_dead_worker_recovers_its_jobs_without_waiting_for_the_lease(store: JobStore) -> None:
    started, prefetched, exhausted, other = make(store, 4)
    store.claim_batch("a/b", "dead", by_key, 3, lease_s=3600)  # long leases: nothing expires
    store.claim_batch("a/b", "alive", by_key, 1, lease_s=3600)
    store.start([started.id, exhausted.id], "dead")
    _sql(store, f"UPDATE jobs SET attempts = 2 WHERE id = '{exhausted.id}'")  # its last attempt
    store.set_pipeline_state(PipelineState("a/b", "dead", "ready"))
    assert store.recover_expired_leases(max_attempts=2) == []  # the lease alone would keep them an hour

    released = store.release_dead_worker("dead", max_attempts=2)
    assert sorted(released) == sorted([started.id, prefetched.id, exhausted.id])
    jobs = {j.id: store.get(j.id) for j in (started, prefetched, exhausted, other)}
    assert (jobs[started.id].status, jobs[started.id].attempts) == ("IN_QUEUE", 1)  # the attempt still counts
    assert (jobs[prefetched.id].status, jobs[prefetched.id].attempts) == ("IN_QUEUE", 0)  # never ran: free
    assert jobs[exhausted.id].status == "COMPLETED"
    assert jobs[exhausted.id].error["error_type"] == "runner_disconnected"
    assert jobs[other.id].status == "IN_PROGRESS" and jobs[other.id].worker_id == "alive"
    assert [s for s in store.pipeline_states() if s.worker_id == "dead"] == []


def test_fail_queued_completes_only_that_endpoints_queued_jobs(store: JobStore) -> None:
    queued, running = make(store, 2)
    elsewhere = Job(id="other-endpoint", endpoint="c/d", input={})
    store.create(elsewhere)
    _sql(store, f"UPDATE jobs SET created_at = 0 WHERE id = '{running.id}'")
    store.claim_batch("a/b", "w", by_key, 1, lease_s=60)
    error = {"status_code": 503, "detail": "run `fal-onprem weights pull`", "error_type": "pipeline_unavailable"}
    assert store.fail_queued("a/b", error) == [queued.id]
    failed = store.get(queued.id)
    assert failed is not None and failed.status == "COMPLETED" and failed.error == error
    assert store.get(running.id).status == "IN_PROGRESS" and store.get(elsewhere.id).status == "IN_QUEUE"
    assert _stats(store) == [("a/b", "pipeline_unavailable", 1)]


def _stats(store: JobStore) -> list[tuple]:
    return sorted(tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in store.completed_stats())


def test_old_finished_jobs_are_purged_and_metrics_keep_counting_them(store: JobStore, clock: FakeClock) -> None:
    ok, failed, hooked, running = make(store, 4)
    _sql(store, f"UPDATE jobs SET webhook_url = 'https://hook.example/x' WHERE id = '{hooked.id}'")
    store.claim_batch("a/b", "w", by_key, 4, lease_s=60)
    store.append_log(ok.id, LogEntry("hello"))
    store.complete(ok.id, result={"x": 1}, metrics={"queue_time": 0.2, "inference_time": 1.5, "batch_size": 3})
    store.complete(failed.id, error={"status_code": 422, "detail": "no", "error_type": "image_load_error"})
    store.complete(hooked.id, result={"x": 2})
    buckets = HISTOGRAM_BUCKETS["inference_time"]
    before_stats, before_hist = _stats(store), store.metric_histogram("inference_time", buckets)
    assert before_stats == [("a/b", "", 2), ("a/b", "image_load_error", 1)]
    assert before_hist == [("a/b", [0] * buckets.index(2.5) + [1] * (len(buckets) - buckets.index(2.5)), 1.5, 1)]

    assert store.purge_finished(clock() - 3600) == 0  # younger than the TTL: kept
    assert store.purge_finished(clock() + 1) == 2  # the webhook owed for `hooked` keeps it
    assert store.get(ok.id) is None and store.get(failed.id) is None and store.logs(ok.id) == []
    assert store.get(hooked.id) is not None and store.get(running.id) is not None  # unfinished: never purged
    assert _stats(store) == before_stats  # counters, not a scan
    assert store.metric_histogram("inference_time", buckets) == before_hist


def test_counters_count_every_way_a_job_completes(store: JobStore, clock: FakeClock) -> None:
    cancelled, late, done = make(store, 3)
    _sql(store, f"UPDATE jobs SET start_deadline = 0 WHERE id = '{late.id}'")
    store.request_cancel(cancelled.id)
    store.expire_deadlines()
    store.claim_batch("a/b", "w", by_key, 1, lease_s=60)
    store.complete(done.id, result={}, metrics={"batch_size": 1})
    assert _stats(store) == [("a/b", "", 1), ("a/b", "request_cancelled", 1), ("a/b", "request_timeout", 1)]
    assert store.metric_histogram("batch_size", HISTOGRAM_BUCKETS["batch_size"]) == [("a/b", [1] * 7, 1.0, 1)]


def test_a_store_made_before_counters_is_counted_once(store: JobStore, store_url: str, clock: FakeClock) -> None:
    (job,) = make(store, 1)
    store.claim_batch("a/b", "w", by_key, 1, lease_s=60)
    store.complete(job.id, result={}, metrics={"batch_size": 1})
    _sql(store, "DELETE FROM store_meta")  # as a store from before the counters
    _sql(store, "UPDATE completed_counts SET n = 99")
    if isinstance(store, SQLiteJobStore):
        reopened: JobStore = SQLiteJobStore(store_url.removeprefix("sqlite:///"), clock=clock)
    else:
        reopened = PostgresJobStore(store_url, clock=clock)
    try:
        assert _stats(reopened) == [("a/b", "", 1)]
        assert reopened.metric_histogram("batch_size", HISTOGRAM_BUCKETS["batch_size"])[0][3] == 1
    finally:
        reopened.close()


def test_sqlite_submit_on_the_event_loop_never_waits_for_another_process_writing(tmp_path: Path) -> None:
    """``try_create`` (the API's submit on its event loop) gives up at once while another process writes;
    ``create`` waits and goes on as soon as that writer commits."""
    path = str(tmp_path / "jobs.sqlite")
    store = SQLiteJobStore(path)
    ctx = mp.get_context("spawn")
    held, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=hold_the_write_lock, args=(path, held, release))
    holder.start()
    try:
        assert held.wait(60)
        first, second = (Job(id=f"j{i}", endpoint="a/b", input={"k": 0}, created_at=1000.0 + i) for i in range(2))
        assert store.try_create([first]) is False
        assert store.queue_depths() == {}
        release.set()
        store.create(first)  # blocks until the holder commits
        assert store.try_create([second]) is True
        assert store.queue_depths() == {"a/b": 2}
    finally:
        release.set()
        holder.join(timeout=30)
        store.close()


def test_an_older_sqlite_counting_trigger_is_replaced_and_its_counts_recounted(tmp_path: Path) -> None:
    """A store whose trigger counted each job in every bucket above its value (counters version 1) gets the
    current trigger and is counted once more from its jobs."""
    path = tmp_path / "jobs.sqlite"
    store = SQLiteJobStore(path)
    (job,) = make(store, 1)
    store.claim_batch("a/b", "w", by_key, 1, lease_s=60)
    store.complete(job.id, result={}, metrics={"batch_size": 1})
    _sql(store, "DROP TRIGGER jobs_completed_counters")
    _sql(store, "CREATE TRIGGER jobs_completed_counters AFTER UPDATE OF status ON jobs BEGIN SELECT 1; END")
    _sql(store, "UPDATE store_meta SET value = '1' WHERE key = 'counters'")
    _sql(store, "UPDATE histogram_counts SET n = 99")
    store.close()
    reopened = SQLiteJobStore(path)
    try:
        (again,) = make(reopened, 1, t0=2000.0)
        reopened.claim_batch("a/b", "w", by_key, 1, lease_s=60)
        reopened.complete(again.id, result={}, metrics={"batch_size": 3})
        assert _stats(reopened) == [("a/b", "", 2)]
        assert reopened.metric_histogram("batch_size", HISTOGRAM_BUCKETS["batch_size"]) == [
            ("a/b", [1, 1, 2, 2, 2, 2, 2], 4.0, 2)
        ]
    finally:
        reopened.close()
