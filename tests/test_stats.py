"""The stats segment without processes: counters, function tables, carry-over of dead children."""

from __future__ import annotations

from shardgear import stats
from shardgear.jobs import Function, Job
from shardgear.proto.packets import PacketType
from shardgear.scheduler import Scheduler
from shardgear.shm import layout


def make(children: int = 3, shards: int = 1, table: int = 64 * 1024) -> bytearray:
    buf = bytearray(layout.stats_bytes(children, shards, table))
    stats.initialize(buf, children, shards, table)
    return buf


def test_function_stats_follow_a_job_through_the_scheduler() -> None:
    fs = stats.FunctionStats()
    sched = Scheduler(shard_index=0, shard_count=1, handle_prefix=b"H:t", metrics=fs)
    body = b"f\0\0data"
    sched.handle_packet(1, PacketType.SUBMIT_JOB_HIGH, body, 100.0)
    sched.handle_packet(1, PacketType.SUBMIT_JOB, body, 100.0)
    sched.handle_packet(2, PacketType.CAN_DO, b"f", 100.0)
    sched.handle_packet(2, PacketType.GRAB_JOB, b"", 100.5)  # HIGH first: waited 0.5 s
    sched.handle_packet(2, PacketType.WORK_COMPLETE, b"H:t:1\0ok", 102.5)  # ran 2 s
    sched.handle_packet(2, PacketType.GRAB_JOB, b"", 103.0)
    sched.disconnect(2, 104.0)  # the normal job is requeued
    table = fs.table(sched.functions())
    row = table["f"]
    assert row[stats.R_QUEUED : stats.R_QUEUED + 3] == [0, 1, 0]
    assert row[stats.R_RUNNING] == 0 and row[stats.R_WORKERS] == 0
    counts = row[stats.R_COUNTS : stats.R_COUNTS + 3 * stats.NK]
    high, normal = counts[: stats.NK], counts[stats.NK : 2 * stats.NK]
    assert high[stats.SUBMITTED] == 1 and high[stats.COMPLETED] == 1
    assert normal[stats.SUBMITTED] == 1 and normal[stats.REQUEUED] == 1
    wait_high = row[stats.R_WAIT : stats.R_WAIT + stats.NB]
    assert sum(wait_high) == 1
    assert wait_high[stats.TIME_BOUNDS.index(0.5)] == 1  # le="0.5"
    assert row[stats.R_WAIT_SUM] == 0.5
    run_high = row[stats.R_RUN : stats.R_RUN + stats.NB]
    assert run_high[stats.TIME_BOUNDS.index(2.5)] == 1 and row[stats.R_RUN_SUM] == 2.0


def test_an_epoch_job_waits_from_its_time_and_recovered_jobs_are_not_observed() -> None:
    fs = stats.FunctionStats()
    fn = Function(b"g", 0)
    job = Job(b"H:1", fn, b"", b"", 1, 200, b"", True)
    fs.submitted(job, 100.0)
    assert job.mark == 200.0
    recovered = Job(b"H:2", fn, b"", b"", 1, 0, b"", True)
    fs.assigned(recovered, 300.0)  # mark 0: no wait observed
    assert sum(fs.funcs[b"g"].wait) == 0
    fs.ended(recovered, int(PacketType.WORK_FAIL), 301.0)
    assert fs.funcs[b"g"].counts[1 * stats.NK + stats.FAILED] == 1
    assert sum(fs.funcs[b"g"].run) == 1


def test_child_blocks_and_tables_round_trip_and_survive_a_restart() -> None:
    buf = make()
    reader = stats.StatsReader(buf)
    front = stats.ChildStats(buf, 1)
    shard = stats.ChildStats(buf, 0, shard=0)
    front.block[layout.ST_ACCEPTED] += 3
    front.block[layout.ST_CLOSED] += 1
    shard.commit_done(5000, 0.002)  # a job log write of 5000 bytes
    row = [0] * stats.ROW_LEN
    row[stats.R_QUEUED + 1] = 7
    row[stats.R_COUNTS + stats.NK + stats.SUBMITTED] = 9
    shard.publish(1.0, 7, 0, 100, 1000, {"f": row})
    assert reader.live(1)[layout.ST_ACCEPTED] == 3
    b = reader.block(0)
    assert b[layout.ST_STORE_COMMITS] == 1 and b[layout.ST_STORE_BYTES] == 5000
    assert b[layout.ST_STORE_BATCH_BUCKETS + layout.STORE_BATCH_BOUNDS.index(16384)] == 1
    assert b[layout.ST_STORE_COMMIT_BUCKETS + layout.STORE_COMMIT_BOUNDS.index(0.0025)] == 1
    assert b[layout.ST_QUEUED] == 7
    assert reader.table(0)["f"][stats.R_QUEUED + 1] == 7
    # both processes die and are replaced: totals stay, gauges start afresh
    reader.retire(1)
    reader.retire(0, 0)
    assert reader.live(1)[layout.ST_ACCEPTED] == 0
    assert reader.block(1)[layout.ST_ACCEPTED] == 3
    assert reader.block(0)[layout.ST_QUEUED] == 0
    assert reader.block(0)[layout.ST_STORE_COMMITS] == 1
    carried = reader.table(0)["f"]
    assert carried[stats.R_QUEUED + 1] == 0
    assert carried[stats.R_COUNTS + stats.NK + stats.SUBMITTED] == 9
    new = stats.ChildStats(buf, 0, shard=0)
    row2 = [0] * stats.ROW_LEN
    row2[stats.R_COUNTS + stats.NK + stats.SUBMITTED] = 1
    new.publish(2.0, 0, 0, 0, 1000, {"f": row2})
    assert reader.table(0)["f"][stats.R_COUNTS + stats.NK + stats.SUBMITTED] == 10


def test_a_table_too_big_keeps_what_fits() -> None:
    buf = make(table=4096)
    shard = stats.ChildStats(buf, 0, shard=0)
    table = {f"function-{i}": [0] * stats.ROW_LEN for i in range(100)}
    shard.publish(1.0, 0, 0, 0, 0, table)
    got = stats.StatsReader(buf).table(0)
    assert 0 < len(got) < 100 and shard.table_omitted == 100 - len(got)
