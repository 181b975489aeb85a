"""`ledger worker`: one faust worker process. Several in one consumer group share the partitions."""

from __future__ import annotations

import logging
from pathlib import Path

from streams.config import StoreKind, WorkerConfig

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def run_worker(
    bootstrap_servers: str,
    partitions: int,
    data_dir: Path,
    store: StoreKind,
    metrics_port: int | None,
    loglevel: str = "warning",
) -> None:
    import faust
    from prometheus_client import start_http_server

    from streams.app import create_app

    logging.basicConfig(level=loglevel.upper(), format=LOG_FORMAT)
    data_dir.mkdir(parents=True, exist_ok=True)
    config = WorkerConfig(
        bootstrap_servers=bootstrap_servers,
        partitions=partitions,
        data_dir=data_dir,
        store=store,
        metrics_port=metrics_port,
    )
    app = create_app(config)
    if metrics_port is not None:
        start_http_server(metrics_port, addr="127.0.0.1")
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
