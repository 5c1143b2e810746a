"""Prometheus metrics of a training run (docs/monitoring.md is the reference).

Two halves, so that every mode shares them:

* ``MetricsCallback`` runs in the training process (local mode, each Ray Train worker, each
  Tune trial). After every stats flush it turns the new rows into one small, picklable
  ``MetricsUpdate``: counter increments, step durations, and the window values computed by
  the diagnostics module (the same code as the report), and hands it to a ``push`` function.
* ``MetricsExporter`` owns the prometheus-client registry and the HTTP endpoint. Local mode
  runs it in-process; distributed and tune modes run it in one Ray actor that every worker
  pushes to (``dcgan/metrics_sink.py``), so a run has one stable scrape target.
"""

from __future__ import annotations

import errno
import math
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import PackageNotFoundError, version
from itertools import pairwise

from dcgan.diagnostics import DEFAULT_WINDOW, SEED_PROFILE, assess, balance_score, window_stats
from dcgan.errors import DCGANError
from dcgan.losses import LossProfile
from dcgan.stats import best_of_latest, best_overall
from dcgan.trainer import Callback, Outcome, Trainer

LABELS = ("run", "mode", "trial", "rank")
MODES = ("local", "distributed", "tune")
# dcgan_training_status: 0 good (every check passes), 1 warning, 2 bad.
# Scrapers waiting to be accepted (Prometheus servers, dashboards, a load balancer's checks).
LISTEN_BACKLOG = 1024
STATUS_CODES = {"good": 0, "warning": 1, "bad": 2}
# Failed checks that mean the run is wasting compute, not merely off balance.
BAD_CHECKS = frozenset({"vanishing_gradients", "instability"})
# Step times from ~1 ms (a GPU with CUDA graphs) to seconds (a small CPU).
STEP_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
# The help texts quote the window (dcgan.diagnostics) and the seed's loss's accuracy band
# (its profile, dcgan.losses), formatted from them.
_LAST = f"last {DEFAULT_WINDOW} iterations"
_ACC_BAND = "{}: healthy {:g}-{:g}".format(SEED_PROFILE.name, *SEED_PROFILE.acc_band)
# Window values: gauge name -> WindowStats attribute (accuracies are fractions in 0-1).
WINDOW_GAUGES = {
    "dcgan_d_loss": ("d_loss", f"Discriminator loss, mean of the {_LAST}"),
    "dcgan_g_loss": ("g_loss", f"Generator loss, mean of the {_LAST}"),
    "dcgan_loss_ratio": ("loss_ratio", f"Mean G loss / mean D loss over the {_LAST} "
                                       "(healthy: dcgan_loss_ratio_band_*; only for losses that "
                                       "have a band)"),
    "dcgan_d_real_accuracy": ("real_acc", f"Fraction of real images D calls real, {_LAST} "
                                          f"({_ACC_BAND})"),
    "dcgan_d_fake_accuracy": ("fake_acc", f"Fraction of generated images D calls fake, "
                                          f"{_LAST} ({_ACC_BAND})"),
}
# The loss's own limits (its profile, dcgan.losses), exported beside the values so that the
# alert rules compare with them; a loss without the rule exports no series, and no alert fires.
LIMIT_GAUGES = {
    "dcgan_loss_ratio_band_low": "Lower end of the healthy G/D loss ratio for this run's loss",
    "dcgan_loss_ratio_band_high": "Upper end of the healthy G/D loss ratio for this run's loss",
    "dcgan_d_accuracy_too_strong": "Mean D accuracy above which this run's loss calls D too "
                                   "strong",
}


# The augmentation of what D sees (dcgan.augment): gauge name -> stats column.
AUGMENT_GAUGES = {
    "dcgan_augment_probability": ("augment_p", "Probability that each augmentation transform "
                                               "is applied to an image D sees (0-1)"),
    "dcgan_augment_overfitting": ("augment_r", "r = E[sign D(x)] on real images at the "
                                               "controller's latest decision (ADA's measure of "
                                               "D's overfitting; p rises while r > "
                                               "augment_target)"),
}


def augment_values(trainer: Trainer, rows: Sequence[dict]) -> dict[str, float] | None:
    """The latest row's augmentation columns (only finite values: r is unknown until the
    controller's first decision)."""
    if trainer.augment is None or not rows:
        return None
    last = rows[-1]
    return {col: float(last[col]) for col, _ in AUGMENT_GAUGES.values()
            if math.isfinite(last[col])}


def profile_limits(profile: LossProfile) -> dict[str, float]:
    limits = {}
    if profile.ratio_band is not None:
        limits["dcgan_loss_ratio_band_low"], limits["dcgan_loss_ratio_band_high"] = \
            profile.ratio_band
    if profile.d_too_strong is not None:
        limits["dcgan_d_accuracy_too_strong"] = profile.d_too_strong
    return limits


class MetricsError(DCGANError):
    """The metrics endpoint cannot be served (port in use, bad host)."""

    exit_code = 2


def package_version() -> str:
    try:
        return version("dcgan")
    except PackageNotFoundError:
        return "unknown"


def training_status(failed_checks: Sequence[str]) -> str:
    """good / warning / bad from the names of the diagnostics checks that failed."""
    if any(name in BAD_CHECKS for name in failed_checks):
        return "bad"
    return "warning" if failed_checks else "good"


@dataclass
class MetricsUpdate:
    """What one process reports after a stats flush (sent to a Ray actor in some modes)."""

    rank: int
    trial: str
    step: int
    epoch: float  # epochs completed, fractional
    progress: float  # step / total steps, 0-1
    new_steps: int
    new_images: int
    step_seconds: list[float] = field(default_factory=list)
    window: dict[str, float] | None = None  # WINDOW_GAUGES attributes + balance_score
    limits: dict[str, float] = field(default_factory=dict)  # LIMIT_GAUGES of the run's loss
    status: str | None = None
    fid: float | None = None  # the better generator (G or its average) at the latest step
    best_fid: float | None = None  # the run's best so far: dcgan_generator_best.pth
    # The augmentation's p and the overfitting measure r at the latest row (AUGMENT_GAUGES
    # keys); None when the run does not augment.
    augment: dict[str, float] | None = None
    active: bool = True


def window_values(columns: Mapping[str, Sequence], profile: LossProfile = SEED_PROFILE,
                  window: int = DEFAULT_WINDOW) -> tuple[dict[str, float], str] | None:
    """Window gauges and status of a stats table, through the diagnostics module. The loss
    ratio is left out for a loss that has no band for it (its G loss can be negative)."""
    if not columns.get("d_loss"):
        return None
    ws = window_stats(columns, window)
    values = {attr: float(getattr(ws, attr)) for attr, _ in WINDOW_GAUGES.values()
              if attr != "loss_ratio" or profile.ratio_band is not None}
    values["balance_score"] = balance_score(ws, profile)
    if not all(math.isfinite(values[k]) for k in ("d_loss", "g_loss")):
        return values, "bad"
    failed = [c.name for c in assess(ws, profile) if not c.passed]
    return values, training_status(failed)


class MetricsCallback(Callback):
    """Pushes a ``MetricsUpdate`` after every stats flush and at the end of training."""

    def __init__(self, push: Callable[[MetricsUpdate], None], trial: str = ""):
        self.push, self.trial = push, trial
        self._last_time: float | None = None

    def _update(self, trainer: Trainer, rows: Sequence[dict], active: bool = True
                ) -> MetricsUpdate:
        times = [r["time"] for r in rows]
        if self._last_time is not None:
            times.insert(0, self._last_time)
        if rows:
            self._last_time = rows[-1]["time"]
        profile = trainer.loss.profile
        values = window_values(trainer.stats.local_columns, profile)
        latest, best = best_of_latest(trainer.stats.evals), best_overall(trainer.stats.evals)
        return MetricsUpdate(
            rank=trainer.rank, trial=self.trial, step=trainer.step,
            epoch=trainer.step / trainer.batches_per_epoch,
            progress=trainer.step / max(trainer.total_steps, 1),
            new_steps=len(rows), new_images=len(rows) * trainer.cfg.batch_size,
            step_seconds=[b - a for a, b in pairwise(times)],
            window=values[0] if values else None, status=values[1] if values else None,
            limits=profile_limits(profile),
            fid=latest["fid"] if latest else None, best_fid=best["fid"] if best else None,
            augment=augment_values(trainer, rows), active=active)

    def on_train_start(self, trainer: Trainer) -> None:
        self._last_time = None  # the first row after a (re)start has no predecessor
        self.push(self._update(trainer, []))

    def on_rows(self, trainer: Trainer, rows: list[dict]) -> None:
        self.push(self._update(trainer, rows))

    def on_train_end(self, trainer: Trainer, outcome: Outcome) -> None:
        update = self._update(trainer, [], active=False)
        if outcome is Outcome.DIVERGED:
            update.status = "bad"
        self.push(update)


class MetricsExporter:
    """The registry and HTTP endpoint of one run. ``apply`` is the only writer."""

    def __init__(self, run: str, mode: str, config: Mapping[str, object]):
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            Info,
            disable_created_metrics,
        )

        disable_created_metrics()  # no *_created series: half the series, nothing lost
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.run, self.mode = run, mode
        self.registry = r = CollectorRegistry()
        self.gauges = {name: Gauge(name, doc, LABELS, registry=r)
                       for name, (_, doc) in WINDOW_GAUGES.items()}
        self.limits = {name: Gauge(name, doc, LABELS, registry=r)
                       for name, doc in LIMIT_GAUGES.items()}
        self.balance = Gauge("dcgan_balance_score", "Distance from balanced training over the "
                             f"{_LAST} (0 is balanced; docs/diagnostics.md)",
                             LABELS, registry=r)
        self.epoch = Gauge("dcgan_epoch", "Epochs completed (fractional)", LABELS, registry=r)
        self.progress = Gauge("dcgan_progress_ratio", "Steps done / steps planned (0-1)",
                              LABELS, registry=r)
        self.fid = Gauge("dcgan_fid", "FID of the latest evaluation, the better of G and its "
                         "moving average (lower is better; docs/evaluation.md)", LABELS,
                         registry=r)
        self.best_fid = Gauge("dcgan_best_fid", "Lowest FID of the run so far: the generator "
                              "in dcgan_generator_best.pth", LABELS, registry=r)
        self.status = Gauge("dcgan_training_status", "Diagnostics verdict: 0 good, 1 warning, "
                            "2 bad", LABELS, registry=r)
        self.active = Gauge("dcgan_training_active", "1 while this process trains, 0 once it "
                            "has finished or stopped", LABELS, registry=r)
        self.steps = Counter("dcgan_steps", "Training steps done by this process", LABELS,
                             registry=r)
        self.images = Counter("dcgan_images", "Real images this process trained on", LABELS,
                              registry=r)
        self.step_time = Histogram("dcgan_step_duration_seconds", "Wall time per training "
                                   "step", LABELS, buckets=STEP_BUCKETS, registry=r)
        self.augment = {name: Gauge(name, doc, LABELS, registry=r)
                        for name, (_, doc) in AUGMENT_GAUGES.items()}
        self.info = Info("dcgan_run", "Version and configuration of the run", LABELS[:3],
                         registry=r)
        self.server = None
        self._page = b""  # the exposition scrapes get: rendered once per update
        self.set_config("", config)

    def render(self) -> None:
        """Render the exposition once, for every scrape until the next update: a scrape then
        costs a copy of bytes, not a walk of the registry in the training process."""
        from prometheus_client import generate_latest

        self._page = generate_latest(self.registry)

    def set_config(self, trial: str, config: Mapping[str, object]) -> None:
        """The info metric for a run (or one trial of a search)."""
        labels = {"version": package_version(), **{k: str(v) for k, v in config.items()}}
        self.info.labels(self.run, self.mode, trial).info(labels)
        self.render()

    def apply(self, update: MetricsUpdate) -> None:
        labels = (self.run, self.mode, update.trial, str(update.rank))
        self.epoch.labels(*labels).set(update.epoch)
        self.progress.labels(*labels).set(update.progress)
        self.active.labels(*labels).set(1 if update.active else 0)
        self.steps.labels(*labels).inc(update.new_steps)
        self.images.labels(*labels).inc(update.new_images)
        histogram = self.step_time.labels(*labels)
        for seconds in update.step_seconds:
            histogram.observe(seconds)
        if update.window is not None:
            for name, (attr, _) in WINDOW_GAUGES.items():
                if attr in update.window:
                    self.gauges[name].labels(*labels).set(update.window[attr])
            self.balance.labels(*labels).set(update.window["balance_score"])
        for name, value in update.limits.items():
            self.limits[name].labels(*labels).set(value)
        if update.status is not None:
            self.status.labels(*labels).set(STATUS_CODES[update.status])
        if update.fid is not None:
            self.fid.labels(*labels).set(update.fid)
        if update.best_fid is not None:
            self.best_fid.labels(*labels).set(update.best_fid)
        for name, (column, _) in AUGMENT_GAUGES.items():
            if update.augment and column in update.augment:
                self.augment[name].labels(*labels).set(update.augment[column])
        self.render()

    def start(self, host: str, port: int) -> int:
        """Serve /metrics on host:port (the rendering of the latest update, from a thread of
        its own); returns the bound port."""
        import threading

        from prometheus_client import CONTENT_TYPE_LATEST

        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            server_class = type("MetricsServer", (MetricsServer,), {"address_family": family})
            self.server = server_class((host, port), _handler(lambda: self._page))
            self.server.content_type = CONTENT_TYPE_LATEST
        except OSError as exc:
            raise MetricsError(port_error(host, port, exc)) from None
        threading.Thread(target=self.server.serve_forever, name="metrics-endpoint",
                         daemon=True).start()
        return self.server.server_address[1]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class MetricsServer(ThreadingHTTPServer):
    """The endpoint's server: a thread per scrape, and a listen backlog for many scrapers at
    once (Python's default of 5 drops connections that then retry, for seconds)."""

    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True


def _handler(page: Callable[[], bytes]) -> type[BaseHTTPRequestHandler]:
    class MetricsHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  (the name http.server calls)
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404, "only /metrics is served here")
                return
            body = page()
            self.send_response(200)
            self.send_header("Content-Type", self.server.content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # a scrape is not news
            pass

    return MetricsHandler


def port_error(host: str, port: int, exc: OSError) -> str:
    reason = "already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
    return (f"metrics endpoint {host}:{port}: {reason}; pick another --metrics-port "
            "(0 turns metrics off)")


def check_port_free(host: str, port: int) -> None:
    """Fail fast (before Ray or training start) when the metrics port cannot be bound."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, port))
    except OSError as exc:
        raise MetricsError(port_error(host, port, exc)) from None


def check_metrics_args(host: str, port: int) -> None:
    if not 0 <= port <= 65535:
        raise MetricsError(f"--metrics-port must be in 0-65535 (got {port})")
    if port:
        check_port_free(host, port)
