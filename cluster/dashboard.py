"""The Grafana dashboard (``cluster/grafana/dashboards/dcgan-training.json``), built with
Grafana's own typed builders (``grafana-foundation-sdk``) rather than written by hand.

    python -m dcgan_cluster.dashboard            # writes the JSON file (make dashboard)
    python -m dcgan_cluster.dashboard --check    # exits 1 if the committed file differs

The bands drawn on the health panels are the seed's (the ``bce`` loss profile in
``dcgan.losses``): the same numbers as the diagnostics and the alert rules.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dcgan.losses import BCELoss

OUT = Path(__file__).resolve().parent / "grafana" / "dashboards" / "dcgan-training.json"
UID, TITLE = "dcgan-training", "DCGAN training"
SELECT = 'run=~"$run",trial=~"$trial"'
PER_RANK = "{{run}} {{trial}} r{{rank}}"
PER_RUN = "{{run}} {{trial}}"


def _datasource():
    from grafana_foundation_sdk.models import dashboard as m

    return m.DataSourceRef(type_val="prometheus", uid="${datasource}")


def _query(expr: str, legend: str, ref: str = "A"):
    from grafana_foundation_sdk.builders import prometheus

    return (prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref)
            .datasource(_datasource()))


def _place(panel, x: int, y: int, w: int, h: int):
    from grafana_foundation_sdk.models import dashboard as m

    return panel.grid_pos(m.GridPos(x=x, y=y, w=w, h=h)).datasource(_datasource())


def _band(lo: float, hi: float):
    """Green inside [lo, hi], red outside: the healthy band of a value."""
    from grafana_foundation_sdk.builders import dashboard as b
    from grafana_foundation_sdk.models import dashboard as m

    return b.ThresholdsConfig().mode(m.ThresholdsMode.ABSOLUTE).steps(
        [m.Threshold(value=None, color="red"), m.Threshold(value=lo, color="green"),
         m.Threshold(value=hi, color="red")])


def _timeseries(title: str, description: str, *queries, unit: str | None = None,
                band: tuple[float, float] | None = None, percent: bool = False):
    from grafana_foundation_sdk.builders import common, timeseries
    from grafana_foundation_sdk.models import common as c

    panel = timeseries.Panel().title(title).description(description)
    for query in queries:
        panel = panel.with_target(query)
    if unit:
        panel = panel.unit(unit)
    if percent:
        panel = panel.unit("percentunit").min(0).max(1)
    if band is not None:
        panel = panel.thresholds(_band(*band)).thresholds_style(
            common.GraphThresholdsStyleConfig().mode(c.GraphTresholdsStyleMode.LINE_AND_AREA))
    return panel


def build() -> dict:
    """The dashboard as the JSON object Grafana loads."""
    from grafana_foundation_sdk.builders import bargauge, common, dashboard, stat, table
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common as c
    from grafana_foundation_sdk.models import dashboard as m
    from grafana_foundation_sdk.models import prometheus as pm

    seed = BCELoss(0.1).profile
    status_map = m.ValueMap(options={
        "0": m.ValueMappingResult(text="good", color="green"),
        "1": m.ValueMappingResult(text="warning", color="orange"),
        "2": m.ValueMappingResult(text="bad", color="red")})
    status_steps = dashboard.ThresholdsConfig().mode(m.ThresholdsMode.ABSOLUTE).steps(
        [m.Threshold(value=None, color="green"), m.Threshold(value=1, color="orange"),
         m.Threshold(value=2, color="red")])
    last = common.ReduceDataOptions().calcs(["lastNotNull"])
    ratio_lo, ratio_hi = seed.ratio_band
    acc_lo, acc_hi = seed.acc_band
    rate = "[$__rate_interval]"

    panels = [
        _place(stat.Panel().title("Training status").description(
            "Diagnostics verdict over the last 100 iterations, by the run's loss profile: good "
            "(every check passes), warning, bad (vanishing gradients or unstable losses).")
            .with_target(_query(f"max by (run, trial) (dcgan_training_status{{{SELECT}}})",
                                PER_RUN))
            .thresholds(status_steps).mappings([status_map])
            .color_mode(c.BigValueColorMode.BACKGROUND).reduce_options(last), 0, 0, 6, 5),
        _place(bargauge.Panel().title("Progress").description("Steps done / steps planned.")
               .with_target(_query(f"max by (run, trial) (dcgan_progress_ratio{{{SELECT}}})",
                                   PER_RUN))
               .unit("percentunit").min(0).max(1).reduce_options(last), 6, 0, 6, 5),
        _place(stat.Panel().title("Epoch").description("Epochs completed (fractional).")
               .with_target(_query(f"max by (run, trial) (dcgan_epoch{{{SELECT}}})", PER_RUN))
               .unit("none").decimals(2).reduce_options(last), 12, 0, 6, 5),
        _place(_timeseries("FID over time", "FID of the latest evaluation (the better of G and "
                           "its moving average; lower is better, docs/evaluation.md).",
                           _query(f"dcgan_fid{{{SELECT}}}", PER_RUN)), 18, 0, 6, 5),
        _place(_timeseries("Losses (mean of last 100 iterations)",
                           "Discriminator and generator loss, per rank, in the run's loss's "
                           "own units (docs/diagnostics.md).",
                           _query(f"dcgan_d_loss{{{SELECT}}}", f"D {PER_RANK}"),
                           _query(f"dcgan_g_loss{{{SELECT}}}", f"G {PER_RANK}", "B")),
               0, 5, 12, 8),
        _place(_timeseries(f"Loss ratio G/D (band {ratio_lo}-{ratio_hi})",
                           f"Mean G loss over mean D loss (bce runs only). Outside "
                           f"{ratio_lo}-{ratio_hi} one network dominates (alert after 5 "
                           "minutes).",
                           _query(f"dcgan_loss_ratio{{{SELECT}}}", PER_RANK),
                           band=(ratio_lo, ratio_hi)), 12, 5, 12, 8),
        _place(_timeseries(f"D accuracy (band {100 * acc_lo:.0f}-{100 * acc_hi:.0f}%)",
                           "Fractions of real / generated images D classifies correctly. "
                           f"Above {100 * seed.d_too_strong:.0f}% the generator starves (alert "
                           "after 5 minutes; not for wgan-gp, whose critic should separate).",
                           _query(f"dcgan_d_real_accuracy{{{SELECT}}}", f"real {PER_RANK}"),
                           _query(f"dcgan_d_fake_accuracy{{{SELECT}}}", f"fake {PER_RANK}",
                                  "B"),
                           band=(acc_lo, acc_hi), percent=True), 0, 13, 12, 8),
        _place(_timeseries("Balance score", "Distance from balanced training by the run's "
                           "loss profile (0 = balanced; docs/diagnostics.md).",
                           _query(f"dcgan_balance_score{{{SELECT}}}", PER_RANK)), 12, 13, 12, 8),
        _place(_timeseries("Images/s per rank", "Real images trained on per second, per "
                           "worker.",
                           _query(f"sum by (run, trial, rank) (rate(dcgan_images_total"
                                  f"{{{SELECT}}}{rate}))", PER_RANK), unit="short"),
               0, 21, 12, 8),
        _place(_timeseries("Step time p50 / p95", "Wall time per training step, from the "
                           "step-duration histogram.",
                           *[_query(f"histogram_quantile({q}, sum by (le, run, trial, rank) "
                                    f"(rate(dcgan_step_duration_seconds_bucket{{{SELECT}}}"
                                    f"{rate})))", f"p{round(100 * q)} {PER_RANK}", ref)
                             for q, ref in ((0.5, "A"), (0.95, "B"))], unit="s"),
               12, 21, 12, 8),
        _place(_timeseries("Steps/s", "Training steps per second, per worker.",
                           _query(f"sum by (run, trial, rank) (rate(dcgan_steps_total"
                                  f"{{{SELECT}}}{rate}))", PER_RANK), unit="short"),
               0, 29, 12, 7),
        _place(table.Panel().title("Runs").description("Version and configuration of each run "
                                                       "and trial.")
               .with_target(_query(f"dcgan_run_info{{{SELECT}}}", "").instant()
                            .format(pm.PromQueryFormat.TABLE)).show_header(True),
               12, 29, 12, 7),
    ]

    def label_variable(name: str, label: str, query: str):
        return (dashboard.QueryVariable(name).label(label).query(query)
                .datasource(_datasource()).refresh(m.VariableRefresh.ON_TIME_RANGE_CHANGED)
                .multi(True).include_all(True).all_value(".*")
                .sort(m.VariableSort.ALPHABETICAL_ASC))

    board = (dashboard.Dashboard(TITLE).uid(UID).tags(["dcgan", "training", "ray"])
             .description("Health, speed and quality of DCGAN training runs "
                          "(docs/monitoring.md)")
             .refresh("10s").time("now-1h", "now").timezone("").editable()
             .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus")
                            .type("prometheus"))
             .with_variable(label_variable("run", "Run", "label_values(dcgan_run_info, run)"))
             .with_variable(label_variable("trial", "Trial", 'label_values(dcgan_run_info'
                                           '{run=~"$run"}, trial)')))
    for i, panel in enumerate(panels, 1):
        board = board.with_panel(panel.id(i))
    return json.loads(JSONEncoder(sort_keys=True, indent=2).encode(board.build()))


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the committed dashboard differs from the generated one")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        same = OUT.is_file() and OUT.read_text() == text
        print(f"{OUT}: {'up to date' if same else 'differs: run make dashboard'}")
        return 0 if same else 1
    OUT.write_text(text)
    print(f"Wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
