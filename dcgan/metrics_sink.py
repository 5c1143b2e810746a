"""The Prometheus sink (``--metrics-port``, ``--metrics-host``): one scrape target per run.

Its service, a ``MetricsExporter`` (``dcgan.monitoring``), lives where the run's host puts
it (``dcgan.sinks``): in the training process in local mode; in the Ray modes in one actor
on the driver's node, which every worker and trial pushes a ``MetricsUpdate`` to after each
stats flush (fire-and-forget, a few hundred bytes). Ray Train workers and Tune trials come
and go, a restarted one perhaps on another node; it pushes to the same service, so its
counters continue and the scrape target never moves (docs/monitoring.md). Light at import:
the command line's parser builds from it (tests/test_startup.py).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_HOST = "127.0.0.1"


class MetricsService:
    """A ``MetricsExporter`` behind ``ask``/``tell`` calls: its errors come back as values,
    since an actor's exception would reach the driver as a Ray error."""

    def __init__(self, run: str, mode: str, config: Mapping[str, object]):
        from dcgan.monitoring import MetricsExporter

        self.exporter = MetricsExporter(run, mode, config)

    def start(self, host: str, port: int) -> tuple[int, str | None]:
        from dcgan.monitoring import MetricsError

        try:
            return self.exporter.start(host, port), None
        except MetricsError as exc:
            return 0, str(exc)

    def apply(self, update) -> None:
        self.exporter.apply(update)

    def set_config(self, trial: str, config: Mapping[str, object]) -> None:
        self.exporter.set_config(trial, config)

    def stop(self) -> None:
        self.exporter.stop()


@dataclass(frozen=True)
class MetricsSink:
    host: str = DEFAULT_HOST
    port: int = 0

    @staticmethod
    def add_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--metrics-port", type=int, default=0, metavar="PORT",
                       help="serve Prometheus metrics on this port (default 0: off)")
        p.add_argument("--metrics-host", default=DEFAULT_HOST, metavar="HOST",
                       help=f"address the metrics endpoint listens on (default {DEFAULT_HOST}; "
                            "0.0.0.0 in containers)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> MetricsSink | None:
        return cls(args.metrics_host, args.metrics_port) if args.metrics_port else None

    def check(self) -> None:
        from dcgan.monitoring import check_metrics_args

        check_metrics_args(self.host, self.port)

    def open(self, run: Any, stack: contextlib.ExitStack,  # run: a dcgan.sinks.RunInfo
             write: Callable[[str], None]) -> MetricsFeed:
        from dcgan.monitoring import MetricsError

        service = run.host(MetricsService, run.name, run.mode, dict(run.config))
        port, error = service.ask("start", self.host, self.port)
        if error:
            service.release()
            raise MetricsError(error)
        stack.callback(service.release)  # the endpoint stops with its service
        every = {"local": "", "distributed": " of every worker", "tune": " of every trial"}
        write(f"Prometheus metrics{every[run.mode]} on http://{self.host}:{port}/metrics")
        return MetricsFeed(service)


@dataclass(frozen=True)
class MetricsFeed:
    """Picklable where its service is an actor's handle (the Ray modes)."""

    service: Any  # a dcgan.sinks.Handle

    def callback(self, trial: str):
        from dcgan.monitoring import MetricsCallback

        service = self.service
        return MetricsCallback(lambda update: service.tell("apply", update), trial=trial)

    def trial_config(self, trial: str, config: dict[str, Any]) -> None:
        self.service.tell("set_config", trial, config)
