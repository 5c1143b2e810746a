"""The capacity watchdog of ``dcgan train-distributed``: a driver thread that watches
whether the Ray cluster's alive nodes still hold the CPUs (and GPUs) the worker group needs.

Why: when a worker host leaves for good, Ray Train waits without end for resources that
will not come back. The watchdog gives it ``DCGAN_CAPACITY_WAIT_S`` seconds (120 by
default) and then stops the run, so the driver ends in one line with the latest
checkpoint instead of hanging. The run is stopped rather than continued on the remaining
capacity: the global batch is split over a fixed number of workers.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Protocol

# How long the driver waits for a worker group the cluster cannot hold any more (a worker
# host left for good) before it stops the run with one line instead of waiting forever.
CAPACITY_WAIT_ENV = "DCGAN_CAPACITY_WAIT_S"
CAPACITY_WAIT_S = 120.0


class WorkerGroup(Protocol):
    """What the watch reads of the run's plan (``launch.DistributedRun``)."""

    @property
    def workers(self) -> int: ...
    @property
    def gpu(self) -> bool | None: ...
    @property
    def cpus_per_worker(self) -> float: ...
    @property
    def gpus_per_worker(self) -> float: ...


class CapacityWatch:
    """While the run trains, checks every few seconds that the cluster's alive nodes still
    hold what the worker group needs. Ray Train would otherwise wait without end for the
    resources of a lost host; after ``DCGAN_CAPACITY_WAIT_S`` seconds short, this stops
    the run (``fired`` says why) by interrupting the driver's main thread."""

    def __init__(self, plan: WorkerGroup, message, every_s: float = 2.0):
        self.need = {"CPU": plan.workers * plan.cpus_per_worker,
                     **({"GPU": plan.workers * plan.gpus_per_worker} if plan.gpu else {})}
        self.workers = plan.workers
        self.wait_s = float(os.environ.get(CAPACITY_WAIT_ENV) or CAPACITY_WAIT_S)
        self.every_s, self.message = every_s, message
        self.fired: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="capacity-watch",
                                        daemon=True)

    def __enter__(self) -> CapacityWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def short(self) -> str | None:
        import ray

        have = ray.cluster_resources()
        missing = {k: (have.get(k, 0.0), v) for k, v in self.need.items() if have.get(k, 0.0) < v}
        if not missing:
            return None
        return ", ".join(f"the cluster has {h:g} {k} for {self.workers} workers needing {n:g}"
                         for k, (h, n) in missing.items())

    def _watch(self) -> None:
        since = None
        while not self._stop.wait(self.every_s):
            try:
                why = self.short()
            except Exception:  # noqa: BLE001 - the GCS is unreachable: fit() reports that
                continue
            if why is None:
                since = None
                continue
            since = since or time.monotonic()
            if time.monotonic() - since >= self.wait_s:
                self.fired = f"{why} for {self.wait_s:g} s (a worker host left the cluster)"
                self._abort()
                return

    def _abort(self) -> None:
        """Ray Train's own SIGINT handler aborts the run gracefully (a real signal, not
        interrupt_main: it also ends a blocking wait in Ray's C++). A controller stuck
        waiting for the lost capacity may never answer it: then the driver says why in its
        one line and exits (its run lock is the kernel's and goes with it; every checkpoint
        is already complete in the storage)."""
        os.kill(os.getpid(), signal.SIGINT)
        if self._stop.wait(20):
            return
        print(f"error: {self.message(self.fired)}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
