"""One Prometheus endpoint for a run that trains in many processes.

Ray Train workers (and Tune trials) come and go: a restarted worker is a new process on
perhaps another node. So the endpoint does not live in a worker. It lives in one Ray actor,
created by the driver on the driver's node, that holds the registry; every worker pushes a
``MetricsUpdate`` to it after each stats flush (fire-and-forget, a few hundred bytes). A
restarted worker pushes to the same actor, so its counters continue and the scrape target
never moves. docs/monitoring.md explains the choice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from dcgan.monitoring import MetricsError, MetricsExporter, MetricsUpdate


class MetricsHub:
    """The actor: a ``MetricsExporter`` behind Ray calls."""

    def __init__(self, run: str, mode: str, config: Mapping[str, object]):
        self.exporter = MetricsExporter(run, mode, config)

    def start(self, host: str, port: int) -> tuple[int, str | None]:
        try:
            return self.exporter.start(host, port), None
        except MetricsError as exc:
            return 0, str(exc)

    def apply(self, update: MetricsUpdate) -> None:
        self.exporter.apply(update)

    def set_config(self, trial: str, config: Mapping[str, object]) -> None:
        self.exporter.set_config(trial, config)

    def stop(self) -> None:
        self.exporter.stop()


def start_hub(run: str, mode: str, config: Mapping[str, object], host: str,
              port: int) -> tuple[Any, int]:
    """Start the hub actor on this (the driver's) node and bind its endpoint; returns the
    actor handle and the bound port. Call after ``ray.init``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(num_cpus=0)(MetricsHub).options(scheduling_strategy=here)
    hub = actor.remote(run, mode, dict(config))
    bound, error = ray.get(hub.start.remote(host, port))
    if error:
        ray.kill(hub)
        raise MetricsError(error)
    return hub, bound


def hub_pusher(hub: Any) -> Callable[[MetricsUpdate], None]:
    """A ``MetricsCallback`` push function for a worker: never waits for the hub."""
    return lambda update: hub.apply.remote(update)
