"""``make monitor``: a local Prometheus with the project's config and alert rules, pointed at
a run on this machine (``dcgan train ... --metrics-port 9100``) and at Ray's own metrics.

The cluster config (cluster/prometheus/prometheus.yml) names compose hosts; this renders a
copy whose targets are local, next to a copy of the rules, and runs Prometheus on it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import yaml

PROMETHEUS_DIR = Path(__file__).resolve().parent / "prometheus"
RAY_SD_FILE = "/tmp/ray/prom_metrics_service_discovery.json"
INSTALL_HINT = ("install Prometheus: `apt-get install prometheus` (Debian/Ubuntu, as root), or "
                "download it from https://prometheus.io/download/ and put it on PATH")


def render_config(targets: list[str], ray_sd_file: str = RAY_SD_FILE,
                  scrape_interval: str | None = None) -> dict:
    """The cluster config with the dcgan job scraping ``targets`` and Ray's job reading
    ``ray_sd_file``; rule files stay relative (copy them next to the result)."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        if job["job_name"] == "dcgan":
            job["static_configs"] = [{"targets": list(targets)}]
        elif job["job_name"] == "ray":
            job["file_sd_configs"] = [{"files": [ray_sd_file]}]
        if scrape_interval:
            job["scrape_interval"] = scrape_interval
    if scrape_interval:
        config["global"]["scrape_interval"] = scrape_interval
        config["global"]["evaluation_interval"] = scrape_interval
    return config


def write_config(directory: Path, targets: list[str], ray_sd_file: str = RAY_SD_FILE,
                 scrape_interval: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for rules in config_rule_files():
        shutil.copy(PROMETHEUS_DIR / rules, directory / rules)
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(render_config(targets, ray_sd_file, scrape_interval),
                                   sort_keys=False))
    return path


def config_rule_files() -> list[str]:
    return yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())["rule_files"]


def prometheus_command(config: Path, data_dir: Path, listen: str) -> list[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit(f"error: prometheus is not on PATH; {INSTALL_HINT}")
    return [binary, f"--config.file={config}", f"--storage.tsdb.path={data_dir}",
            f"--web.listen-address={listen}", "--web.enable-lifecycle"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dcgan_cluster.monitor", description=__doc__)
    p.add_argument("--target", action="append", default=None, metavar="HOST:PORT",
                   help="a dcgan metrics endpoint (repeatable; default 127.0.0.1:9100)")
    p.add_argument("--listen", default="127.0.0.1:9090", help="Prometheus web address")
    p.add_argument("--dir", default="runs/monitor", help="config and data directory")
    p.add_argument("--ray-sd-file", default=RAY_SD_FILE,
                   help="the service-discovery file Ray writes on its head node")
    args = p.parse_args(argv)
    directory = Path(args.dir).resolve()
    config = write_config(directory, args.target or ["127.0.0.1:9100"], args.ray_sd_file)
    command = prometheus_command(config, directory / "data", args.listen)
    print(f"Prometheus on http://{args.listen} (alerts: /alerts), config {config}; Ctrl-C "
          "stops it", flush=True)
    os.execv(command[0], command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
