"""A sink's service as a Ray actor on the driver's node (``dcgan.sinks.RunInfo.host`` in the
Ray modes): every worker and trial reaches it by its handle, wherever they run, and a
restarted worker reaches the same one. It holds no CPU (``num_cpus=0``), so it never takes a
worker's place on a small machine."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ActorHandle:
    actor: Any  # Ray's handle: picklable, shipped to workers and trials inside their feeds

    def ask(self, method: str, *args: Any) -> Any:
        import ray

        return ray.get(getattr(self.actor, method).remote(*args))

    def tell(self, method: str, *args: Any) -> None:
        getattr(self.actor, method).remote(*args)

    def release(self) -> None:
        """Ends the actor (and the endpoint it serves). Never raises: the cluster may be gone
        already, and the run's own error must be the one the user sees."""
        import ray

        with contextlib.suppress(Exception):
            ray.kill(self.actor)


def on_driver_node(cls: type, *args: Any) -> ActorHandle:
    """Start ``cls(*args)`` as an actor on this (the driver's) node. Call after
    ``ray.init``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(num_cpus=0)(cls).options(scheduling_strategy=here)
    return ActorHandle(actor.remote(*args))
