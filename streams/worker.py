"""`ledger worker`: a supervisor that keeps one faust worker process running.

The faust worker is crash-only: it stops on a broken invariant (EXIT_INVARIANT_BROKEN), and the
supervisor starts it again; correctness comes from deterministic decisions and idempotent
consumers. Restarts are bounded, so a worker that keeps failing stops with a clear message
instead of looping. The child dies with its supervisor (PR_SET_PDEATHSIG), so killing
`ledger worker` kills the worker.
Several `ledger worker` processes in one consumer group share the partitions.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import logging
import random
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from types import FrameType

from ledger.kafka.groups import leave_group
from ledger.kafka.partitions import topic_partitions
from ledger.settings import listen_host
from streams.config import StoreKind, WorkerConfig, instance_id

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
log = logging.getLogger("ledger.streams.worker")

RESTARTS_MAX = 8  # within RESTART_WINDOW_SECONDS, then the supervisor gives up
RESTART_WINDOW_SECONDS = 300.0
BACKOFF_SECONDS_MAX = 10.0
STOP_TIMEOUT_SECONDS = 60.0
PR_SET_PDEATHSIG = 1
GC_THRESHOLDS = (100_000, 50, 1_000)  # the batched prototype's (shared/PERF.md)


def log_starts(bootstrap_servers: str, group_id: str) -> dict[str, dict[int, int]]:
    """Where each partition the workers read starts when no progress of ours says otherwise:
    the group's committed offset, else the first offset still in the log."""
    from kafka import KafkaConsumer

    from ledger.kafka import topics
    from ledger.kafka.settings import consumer_config

    consumer = KafkaConsumer(**consumer_config(bootstrap_servers, "ledger-starts", group_id))
    try:
        wanted = topic_partitions(consumer, *topics.WORKER_SOURCES)
        starts: dict[str, dict[int, int]] = {}
        for tp, offset in consumer.beginning_offsets(wanted).items():
            committed = consumer.committed(tp)
            start = committed if committed is not None else offset
            starts.setdefault(tp.topic, {})[tp.partition] = start
        return starts
    finally:
        consumer.close()


def _first_is_marker(consumer: object, tp: object) -> bool:
    from ledger.kafka import topics

    consumer.assign([tp])  # type: ignore[attr-defined]
    consumer.seek(tp, 0)  # type: ignore[attr-defined]
    for records in consumer.poll(timeout_ms=5_000, max_records=1).values():  # type: ignore[attr-defined]
        return any(topics.is_marker(record.key) for record in records)
    return False


def seed_committed_offsets(bootstrap_servers: str, group_id: str) -> int:
    """Give every partition the workers read a committed offset past its marker (offset 1) when it
    has none, or 0 (see PARTITION_MARKER_KEY in ledger/kafka/topics.py: faust 0.15.3 delivers
    nothing of a partition committed at 0). A partition whose log starts later is committed at its
    log start. A group that already has members refuses the commit: then its partitions were
    seeded by the first worker. Returns the partitions seeded."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    from ledger.kafka import topics
    from ledger.kafka.settings import consumer_config

    consumer = KafkaConsumer(**consumer_config(bootstrap_servers, "ledger-seed", group_id))
    try:
        wanted = topic_partitions(consumer, *topics.WORKER_SOURCES)
        starts = consumer.beginning_offsets(wanted)
        seeds: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp in wanted:
            if consumer.committed(tp):  # neither None nor 0
                continue
            if starts[tp] > 0:
                seeds[tp] = OffsetAndMetadata(starts[tp], "", -1)
            elif _first_is_marker(consumer, tp):
                seeds[tp] = OffsetAndMetadata(1, "", -1)
            else:
                log.warning("%s has data at offset 0 and no marker: faust may not deliver it", tp)
        if not seeds:
            return 0
        consumer.assign(list(seeds))
        try:
            consumer.commit(seeds)
        except Exception as error:  # a group with members refuses: it was seeded already
            log.info("offsets not seeded (%s): the group has members", error)
            return 0
        return len(seeds)
    finally:
        consumer.close()


def run_child(config: WorkerConfig, loglevel: str) -> int:
    """The faust worker itself, in this process. Returns its exit status."""
    import faust
    from prometheus_client import start_http_server

    from streams.app import create_app

    logging.basicConfig(level=loglevel.upper(), format=LOG_FORMAT)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    from ledger.kafka.markers import mark_empty_partitions

    mark_empty_partitions(config.bootstrap_servers)
    seeded = seed_committed_offsets(config.bootstrap_servers, config.app_id)
    if seeded:
        log.info("seeded the committed offsets of %d partitions", seeded)
    # After seeding: where each partition starts is then its committed offset.
    config = dataclasses.replace(
        config, log_starts=log_starts(config.bootstrap_servers, config.app_id)
    )
    app = create_app(config)
    if config.metrics_port is not None:
        start_http_server(config.metrics_port, addr=listen_host())
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    # faust's terminal spinner, at any level from WARNING up, sets the root logger to DEBUG and
    # spins on every record: every debug line of aiokafka and faust was then built on the hot
    # path (measured: about a tenth of the worker's time) and escape codes filled the logs.
    worker.spinner = None
    # The collector ran for 30-43 % of the pure core's time with Python's default thresholds
    # (shared/PERF.md: 36k decisions/s, 47.8k with a higher threshold): a batch allocates many
    # short-lived objects and almost no cycles. What start-up allocated is frozen out of it.
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()
    try:
        worker.execute_from_commandline()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    else:
        code = 0
    return code


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def supervise(config: WorkerConfig, loglevel: str) -> int:
    """Run the worker (`python -m streams.worker ...`) until it ends well or fails too often; on
    a stop, take it out of the group at once."""
    try:
        return _supervise(child_arguments(config, loglevel))
    finally:
        if config.static_membership:
            leave_group(config.bootstrap_servers, config.app_id, instance_id(config))


def _supervise(child_args: list[str]) -> int:
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    restarts: deque[float] = deque()
    while True:
        child = subprocess.Popen(
            [sys.executable, "-m", "streams.worker", *child_args],
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - the supervisor runs no threads
        )
        code = child.wait()
        if stopping or code == 0:
            return code
        now = time.monotonic()
        restarts.append(now)
        while restarts and now - restarts[0] > RESTART_WINDOW_SECONDS:
            restarts.popleft()
        if len(restarts) > RESTARTS_MAX:
            print(
                f"ledger worker: the worker failed {len(restarts)} times in "
                f"{RESTART_WINDOW_SECONDS:.0f} s (last exit status {code}): see its log above",
                file=sys.stderr,
            )
            return code if code > 0 else 1
        delay = min(BACKOFF_SECONDS_MAX, 2 ** len(restarts))
        delay *= random.uniform(0.5, 1.0)  # jitter: workers restarting together spread out
        print(f"ledger worker: restarting the worker (exit status {code})", file=sys.stderr)
        time.sleep(delay)


def child_arguments(config: WorkerConfig, loglevel: str) -> list[str]:
    args = [
        "--bootstrap-servers", config.bootstrap_servers, "--partitions", str(config.partitions),
        "--data-dir", str(config.data_dir), "--store", config.store, "--loglevel", loglevel,
        "--name", config.name, *(["--static"] if config.static_membership else []),
    ]  # fmt: skip
    if config.metrics_port is not None:
        args += ["--metrics-port", str(config.metrics_port)]
    return args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams.worker")
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--store", choices=["rocksdb", "memory"], default="rocksdb")
    parser.add_argument("--metrics-port", type=int)
    parser.add_argument("--loglevel", default="warning")
    parser.add_argument("--name", default="w1")
    parser.add_argument("--static", action="store_true")
    args = parser.parse_args(argv)
    store: StoreKind = args.store
    config = WorkerConfig(
        bootstrap_servers=args.bootstrap_servers,
        partitions=args.partitions,
        data_dir=Path(args.data_dir),
        store=store,
        metrics_port=args.metrics_port,
        name=args.name,
        static_membership=args.static,
    )
    return run_child(config, args.loglevel)


if __name__ == "__main__":
    sys.exit(main())
