"""Sinks: where a run's progress goes besides the run's own files, the same in every mode.

The run's own outputs (console, stats, checkpoints, samples) are callbacks that every run
has (``dcgan.assembly``). A ``Sink`` is one a command line asks for (``--metrics-port``:
Prometheus), and it works in local, distributed and search mode without the drivers knowing
which it is:

* ``check()``: its inputs, with the run's other inputs, before anything slow or written
  (``dcgan.prepare.open_run``'s first step): a port that cannot be bound fails in a second;
* ``open(run, stack, write)``: started by the driver once the run starts; ``stack`` closes
  it at the run's end. A sink that needs a service of its own (an HTTP endpoint) starts it
  with ``run.host``: in this process in local mode, in the Ray modes as an actor on the
  driver's node that every worker and trial reaches (``dcgan_cluster.driver_actor``). It
  returns a ``Feed``;
* a ``Feed`` is picklable: it travels to every process that trains (a Ray Train worker, a
  Tune trial), where ``callback(trial)`` makes the loop's ``Callback`` that feeds the sink,
  and a search tells it each trial's config (``trial_config``).

Adding one takes its own file (the sink, its feed and its flags: ``add_args`` /
``from_args``) and one line in ``SINKS`` below.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from dcgan.metrics_sink import MetricsSink

if TYPE_CHECKING:  # the command line's parser imports this module: no torch at import
    from dcgan.trainer import Callback

class Handle(Protocol):
    """A sink's service wherever it lives: ``ask`` waits for the answer, ``tell`` does not;
    ``release`` ends it (never raising: it runs while a run ends, perhaps after a failure)."""

    def ask(self, method: str, *args: Any) -> Any: ...

    def tell(self, method: str, *args: Any) -> None: ...

    def release(self) -> None: ...


@dataclass(frozen=True)
class InProcess:
    """A service in this process (local mode)."""

    service: Any

    def ask(self, method: str, *args: Any) -> Any:
        return getattr(self.service, method)(*args)

    def tell(self, method: str, *args: Any) -> None:
        getattr(self.service, method)(*args)

    def release(self) -> None:
        stop = getattr(self.service, "stop", None)
        if stop is not None:
            stop()


def in_process(cls: type, *args: Any) -> Handle:
    return InProcess(cls(*args))


@dataclass(frozen=True)
class RunInfo:
    """What a sink is told of the run it serves."""

    name: str  # the run's (or search's) directory name
    mode: str  # "local", "distributed" or "tune" (dcgan.monitoring.MODES: the label it serves)
    config: dict[str, Any]  # the run's config (a search's base config)
    host: Callable[..., Handle] = field(default=in_process)  # host(cls, *args): a service


class Feed(Protocol):
    def callback(self, trial: str) -> Callback:
        """The callback that feeds the sink from one training process (``trial``: the Tune
        trial id, empty outside a search)."""
        ...

    def trial_config(self, trial: str, config: dict[str, Any]) -> None:
        """A search started ``trial`` with ``config``."""
        ...


class Sink(Protocol):
    def check(self) -> None:
        """Refuse bad input in one line (a ``DCGANError``), before any work."""
        ...

    def open(self, run: RunInfo, stack: contextlib.ExitStack,
             write: Callable[[str], None]) -> Feed:
        ...


# The sinks a command line can ask for; each adds its flags to train, train-distributed and
# tune.
SINKS = (MetricsSink,)


def add_sink_args(p: argparse.ArgumentParser) -> None:
    for kind in SINKS:
        kind.add_args(p)


def sinks_from_args(args: argparse.Namespace) -> list[Sink]:
    return [sink for kind in SINKS if (sink := kind.from_args(args)) is not None]


def check_sinks(sinks: Sequence[Sink]) -> None:
    for sink in sinks:
        sink.check()


def open_sinks(sinks: Sequence[Sink], run: RunInfo, stack: contextlib.ExitStack,
               write: Callable[[str], None] = print) -> tuple[Feed, ...]:
    return tuple(sink.open(run, stack, write) for sink in sinks)
