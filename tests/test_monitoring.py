"""Prometheus metrics, alert rules and the Grafana dashboard, against a real Prometheus.

Prometheus (and promtool) come from Debian's ``prometheus`` package, which .ci/run installs.
Without it these tests are skipped with the way to install it, except under CI=true, where a
missing Prometheus fails the suite.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from dcgan.config import TrainConfig
from dcgan.data import load_mnist, to_model_range
from dcgan.diagnostics import balance_score, window_stats
from dcgan.monitoring import (
    MetricsCallback,
    MetricsExporter,
    check_port_free,
    training_status,
    window_values,
)
from dcgan.trainer import Trainer
from dcgan_cluster.monitor import INSTALL_HINT, PROMETHEUS_DIR, write_config

from .conftest import (
    HANG_GUARD_S,
    ROOT,
    background,
    free_port,
    one_line_error,
    run_before_ray,
    run_cli,
    sets,
)

DASHBOARD = ROOT / "cluster" / "grafana" / "dashboards" / "dcgan-training.json"


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        message = f"{binary} is not installed; {INSTALL_HINT}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def have(binary: str) -> bool:
    """Whether ``binary`` is installed (for fixtures that watch a run with it when it is);
    under CI=true a missing one fails, as with ``need``."""
    if shutil.which(binary) is None and os.environ.get("CI") == "true":
        pytest.fail(f"{binary} is not installed; {INSTALL_HINT}")
    return shutil.which(binary) is not None


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Samples of an endpoint as {(name, sorted labels): value}."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def steps_by_rank(port: int) -> dict[str, tuple[float, dict]]:
    """rank -> (dcgan_steps_total, its labels) at a local metrics endpoint."""
    return {dict(labels)["rank"]: (value, dict(labels))
            for (name, labels), value in scrape(f"http://127.0.0.1:{port}/metrics").items()
            if name == "dcgan_steps_total"}


def watch_ranks(proc: subprocess.Popen, port: int, timeout: float,
                stop_at: int | None = None) -> dict[str, dict]:
    """Poll the endpoint while ``proc`` runs: rank -> labels of every rank that has stepped
    (until ``stop_at`` ranks have, the process ends, or ``timeout`` passes)."""
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if stop_at is not None and len(seen) >= stop_at:
            break
        time.sleep(0.5)
        try:
            ranks = steps_by_rank(port)
        except OSError:  # not serving yet
            continue
        seen.update({rank: labels for rank, (value, labels) in ranks.items() if value > 0})
    return seen


@contextlib.contextmanager
def prometheus_server(tmp_path: Path, targets: list[str]):
    """A real Prometheus on a free loopback port with the project's config (rendered for
    ``targets``, scraping every second) and rules, in a temporary data directory."""
    binary = need("prometheus")
    port = free_port()
    config = write_config(tmp_path / "prometheus", targets, str(tmp_path / "no-ray-sd.json"),
                          scrape_interval="1s")
    log = open(tmp_path / "prometheus.log", "w")
    proc = subprocess.Popen([binary, f"--config.file={config}",
                             f"--storage.tsdb.path={tmp_path / 'prometheus' / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # a hang guard, not a speed check
        while True:
            try:
                if urllib.request.urlopen(f"{url}/-/ready", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "Prometheus did not become ready"
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def prom_api(url: str, path: str, **params) -> dict:
    query = urllib.parse.urlencode(params, doseq=True)
    body = json.loads(urllib.request.urlopen(f"{url}{path}?{query}", timeout=10).read())
    assert body["status"] == "success", body
    return body["data"]


def dashboard_queries(run: str) -> list[str]:
    """Every PromQL expression of the dashboard, with its variables bound to one run (every
    trial). The local case is here; distributed and tune runs in test_distributed.py and
    test_tune.py. ``$__rate_interval``: what Grafana makes of it for a 15 s scrape."""
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    bound = []
    for e in exprs:
        e = e.replace("$__rate_interval", "1m")
        e = re.sub(r"\$\{?run\}?", re.escape(run), e)
        bound.append(re.sub(r"\$\{?trial\}?", ".*", e))
    return bound


# -- pure logic ---------------------------------------------------------------------------


def test_training_status_rules():
    assert training_status([]) == "good"
    assert training_status(["loss_ratio", "accuracy_band"]) == "warning"
    assert training_status(["accuracy_band", "vanishing_gradients"]) == "bad"
    assert training_status(["instability"]) == "bad"


def test_window_values_are_the_diagnostics_values():
    columns = {"step": list(range(300)), "epoch": [0] * 300,
               "d_loss": [0.6 + 0.001 * i for i in range(300)],
               "g_loss": [1.5 - 0.002 * i for i in range(300)],
               "d_real_acc": [0.95] * 300, "d_fake_acc": [0.7] * 300}
    values, status = window_values(columns)
    ws = window_stats(columns)
    assert values["balance_score"] == balance_score(ws)
    assert values["loss_ratio"] == ws.loss_ratio
    assert (values["real_acc"], values["fake_acc"]) == (ws.real_acc, ws.fake_acc)
    assert status == "warning"  # real accuracy above the band
    assert window_values({"d_loss": []}) is None
    nan = {**columns, "d_loss": columns["d_loss"][:-1] + [math.nan]}
    assert window_values(nan)[1] == "bad"


def test_exporter_follows_a_real_training_loop(data_dir):
    """A Trainer with the metrics callback: counters, histogram and window gauges on the
    registry equal what the stats and the diagnostics say."""
    cfg = TrainConfig(train_subset=128, batch_size=32, epochs=2, log_every=3, device="cpu",
                      data_dir=data_dir)
    images, _ = load_mnist(data_dir, subset=128)
    exporter = MetricsExporter("unit", "local", cfg.to_dict())
    trainer = Trainer(cfg, to_model_range(images), torch.device("cpu"),
                      callbacks=[MetricsCallback(exporter.apply)])
    trainer.fit()
    reg = exporter.registry
    labels = {"run": "unit", "mode": "local", "trial": "", "rank": "0"}
    assert reg.get_sample_value("dcgan_steps_total", labels) == 8
    assert reg.get_sample_value("dcgan_images_total", labels) == 8 * 32
    assert reg.get_sample_value("dcgan_step_duration_seconds_count", labels) == 7
    assert reg.get_sample_value("dcgan_epoch", labels) == 2
    assert reg.get_sample_value("dcgan_progress_ratio", labels) == 1
    assert reg.get_sample_value("dcgan_training_active", labels) == 0
    ws = window_stats(trainer.stats.columns)
    assert reg.get_sample_value("dcgan_balance_score", labels) == pytest.approx(
        balance_score(ws))
    assert reg.get_sample_value("dcgan_d_loss", labels) == pytest.approx(ws.d_loss)
    info = [s for m in reg.collect() if m.name == "dcgan_run" for s in m.samples]
    assert info and info[0].labels["batch_size"] == "32" and info[0].labels["version"]


def test_port_in_use_is_detected():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(Exception, match="already in use"):
            check_port_free("127.0.0.1", port)


# -- the command line -----------------------------------------------------------------------


@pytest.mark.parametrize("command", ["train", "train-distributed"])
def test_port_in_use_fails_before_training(tmp_path, data_dir, command):
    """A port in use fails before training (and before Ray: were the check broken, the
    distributed run would fail on the address where nothing listens, starting no Ray)."""
    out = tmp_path / "run"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        extra = (["--workers", "2", "--address", f"127.0.0.1:{free_port()}"]
                 if command == "train-distributed" else [])
        proc = run_before_ray([command, "--out", str(out), *extra, "--metrics-port", str(port),
                               *sets({"data_dir": data_dir})], timeout=120)
    assert proc.returncode == 2
    assert f"127.0.0.1:{port}: already in use" in one_line_error(proc)
    assert not out.exists()


def test_bad_metrics_port_value(tmp_path):
    proc = run_cli(["train", "--out", str(tmp_path / "r"), "--metrics-port", "70000"])
    assert proc.returncode == 2
    assert "--metrics-port must be in 0-65535" in one_line_error(proc)


# -- promtool -------------------------------------------------------------------------------


@pytest.mark.prometheus
def test_promtool_checks_config_rules_and_rule_tests(tmp_path):
    promtool = need("promtool")
    rendered = write_config(tmp_path, ["127.0.0.1:9100"], str(tmp_path / "sd.json"))
    for args in (["check", "config", str(PROMETHEUS_DIR / "prometheus.yml")],
                 ["check", "config", str(rendered)],
                 ["check", "rules", str(PROMETHEUS_DIR / "alerts.yml")],
                 ["test", "rules", str(PROMETHEUS_DIR / "alerts_test.yml")]):
        proc = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60,
                              cwd=PROMETHEUS_DIR)
        assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}{proc.stderr}"


def test_every_alert_has_a_rule_test():
    import yaml

    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())
    tested = {case["alertname"] for t in tests["tests"] for case in t["alert_rule_test"]
              if case.get("exp_alerts")}
    assert alerts == tested


# -- the dashboard ---------------------------------------------------------------------------


def test_dashboard_is_well_formed():
    board = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "run", "trial"} <= variables
    titles = " | ".join(p["title"] for p in board["panels"]).lower()
    for wanted in ("status", "progress", "fid", "losses", "loss ratio", "accuracy",
                   "balance", "images/s per rank", "p50 / p95"):
        assert wanted in titles, wanted
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        for target in panel["targets"]:
            assert 'run=~"$run"' in target["expr"] and 'trial=~"$trial"' in target["expr"]
    bands = {p["title"]: [s["value"] for s in p["fieldConfig"]["defaults"]["thresholds"]["steps"]]
             for p in board["panels"] if p["fieldConfig"]["defaults"].get("custom")}
    assert [None, 0.3, 3.0] in bands.values() and [None, 0.6, 0.9] in bands.values()


def alert_metric_names() -> set[str]:
    """The metric names every alert expression of alerts.yml reads."""
    import yaml

    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    names = {n for g in rules["groups"] for r in g["rules"]
             for n in re.findall(r"\bdcgan_[a-z_]+\b", r["expr"])}
    assert names
    return names


def exported_names(exporter: MetricsExporter) -> set[str]:
    """The sample names an exporter serves (what Prometheus stores)."""
    from prometheus_client import generate_latest

    text = generate_latest(exporter.registry).decode()
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture(scope="module")
def fed_exporter(data_dir) -> MetricsExporter:
    """An exporter after a real (tiny) training loop with one evaluation: every series it
    can serve has a sample."""
    from dcgan.quality import build_meter
    from dcgan.selection import QualityEvaluator

    cfg = TrainConfig(train_subset=64, batch_size=32, epochs=1, log_every=1, device="cpu",
                      eval_samples=200, data_dir=data_dir)
    images, _ = load_mnist(data_dir, subset=64)
    exporter = MetricsExporter("unit", "local", cfg.to_dict())
    meter = build_meter(data_dir, torch.device("cpu"))
    trainer = Trainer(cfg, to_model_range(images), torch.device("cpu"),
                      callbacks=[QualityEvaluator(meter, every_steps=2),
                                 MetricsCallback(exporter.apply)])
    trainer.fit()
    return exporter


def test_alert_rules_read_the_exporters_real_metric_names(fed_exporter):
    """Every metric an alert (and its rule tests) reads is one the exporter serves, with the
    exporter's labels: a renamed metric would leave an alert that can never fire."""
    import yaml

    served = exported_names(fed_exporter)
    assert alert_metric_names() <= served, alert_metric_names() - served
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())
    series = [s["series"] for t in tests["tests"] for s in t["input_series"]]
    fed = {re.match(r"[a-z_]+", s).group(0) for s in series}
    assert fed <= served, fed - served  # the rule tests feed series the exporter has
    labels = {k for s in series for k in re.findall(r"(\w+)=", s)}
    assert labels <= {"run", "mode", "trial", "rank"}, labels


def test_dashboard_reads_the_exporters_real_metric_names(fed_exporter):
    board = json.loads(DASHBOARD.read_text())
    names = {n for p in board["panels"] for t in p["targets"]
             for n in re.findall(r"\bdcgan_[a-z_]+\b", t["expr"])}
    served = exported_names(fed_exporter)
    assert names and names <= served, names - served


@pytest.mark.slow
def test_dashboard_queries_return_data_from_a_real_prometheus(tmp_path, data_dir):
    """A local run with metrics on, scraped by a real Prometheus with our config and rules:
    every expression of the dashboard returns data, every metric the alerts read has series
    of the run, and every rule loads and evaluates."""
    import yaml

    port = free_port()
    run_dir = tmp_path / "monitored"
    # Bounded by its steps (640, minutes on a CPU): the test ends as soon as every query has
    # answered (well within the first hundred steps); a query that never answers fails it
    # when training ends.
    args = ["train", "--out", str(run_dir), "--no-progress", "--metrics-port", str(port),
            *sets({"train_subset": 512, "batch_size": 32, "epochs": 40, "device": "cpu",
                   "log_every": 2, "eval_every": 1, "eval_samples": 200, "rescore_samples": 300,
                   "sample_every": 0, "checkpoint_every": 0, "data_dir": data_dir})]
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    queries = [*dashboard_queries("monitored"),
               *(f'{name}{{run="monitored"}}' for name in sorted(alert_metric_names()))]
    with prometheus_server(tmp_path, [f"127.0.0.1:{port}"]) as prom, \
            background(args, tmp_path / "train.log") as train:
        answered: set[str] = set()
        health: dict[str, str] = {}
        while len(answered) < len(queries) or set(health) != alerts or \
                any(h != "ok" for h in health.values()):
            assert train.poll() is None, (
                f"training ended; no data for: {set(queries) - answered}; rules: {health}\n"
                + (tmp_path / "train.log").read_text()[-3000:])
            time.sleep(1)
            answered |= {q for q in set(queries) - answered
                         if prom_api(prom, "/api/v1/query", query=q)["result"]}
            health = {r["name"]: r["health"] for g in prom_api(prom, "/api/v1/rules")["groups"]
                      for r in g["rules"]}
            assert "err" not in health.values(), health
        runs = prom_api(prom, "/api/v1/label/run/values", **{"match[]": "dcgan_run_info"})
        assert "monitored" in runs
        targets = prom_api(prom, "/api/v1/targets")["activeTargets"]
        assert any(t["labels"]["job"] == "dcgan" and t["health"] == "up" for t in targets)
        os.killpg(train.pid, signal.SIGTERM)
        assert train.wait(timeout=HANG_GUARD_S) == 143


def test_the_dashboard_is_the_generators_output():
    """cluster/grafana/dashboards/dcgan-training.json is what cluster/dashboard.py builds with
    Grafana's own builders (grafana-foundation-sdk): `make dashboard` after a change."""
    from dcgan_cluster.dashboard import render

    assert DASHBOARD.read_text() == render(), "run: make dashboard"


def test_scrapes_get_the_rendering_of_the_latest_update_many_at_once():
    """The endpoint serves the exposition rendered at the latest update (a scrape never walks
    the registry in the training process), to many scrapers at once, none refused."""
    from concurrent.futures import ThreadPoolExecutor

    from prometheus_client import generate_latest

    from dcgan.monitoring import LISTEN_BACKLOG, MetricsUpdate

    exporter = MetricsExporter("cached", "local", {})
    exporter.apply(MetricsUpdate(rank=0, trial="", step=7, epoch=0.5, progress=0.1,
                                 new_steps=7, new_images=448))
    rendered = generate_latest(exporter.registry)
    port = exporter.start("127.0.0.1", 0)
    try:
        assert exporter.server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        assert exporter.server.request_queue_size == LISTEN_BACKLOG >= 128
        exporter.epoch.labels("cached", "local", "", "0").set(99)  # not an update: not served

        def scrape(_):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
                return r.status, r.headers["Content-Type"], r.read()

        with ThreadPoolExecutor(64) as pool:
            results = list(pool.map(scrape, range(256)))
        assert {(status, body) for status, _, body in results} == {(200, rendered)}
        assert all(kind.startswith("text/plain") for _, kind, _ in results)
        exporter.apply(MetricsUpdate(rank=0, trial="", step=8, epoch=0.6, progress=0.2,
                                     new_steps=1, new_images=64))
        assert b'dcgan_epoch{mode="local",rank="0",run="cached",trial=""} 0.6' in scrape(0)[2]
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=30)
    finally:
        exporter.stop()
