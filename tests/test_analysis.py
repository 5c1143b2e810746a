"""The diagnostics at the end of training, the 6-panel figure, and ``dcgan analyze``."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dcgan import layout
from dcgan.analysis import PANEL_TITLES, build_figure, moving_average
from dcgan.diagnostics import balance_score, diagnose, window_stats
from dcgan.layout import STATS_FILE

from .conftest import background, one_line_error, run_cli, tiny_train_args, wait_for_text
from .test_diagnostics import rows


def test_training_ends_with_report_json_and_figure(finished_run):
    out, stdout = finished_run.out, finished_run.proc.stdout
    assert "[Epoch 0] status: balance " in stdout
    assert "Final Stats (last 16 iterations):" in stdout and "Status Assessment:" in stdout
    info = json.loads((out / layout.DIAGNOSTICS_FILE).read_text())
    assert info["outcome"] == "completed" and info["iterations"] == 16
    assert {c["name"] for c in info["checks"]} >= {"loss_ratio", "accuracy_band", "loss_band",
                                                   "discriminator_strength",
                                                   "vanishing_gradients", "instability",
                                                   "mode_collapse"}
    assert info["balance_score"] >= 0 and "diversity_ratio" in info
    assert (out / layout.ANALYSIS_FILE).stat().st_size > 50_000


def test_figure_has_six_labelled_panels():
    import matplotlib.pyplot as plt

    cols = rows(n=300)
    fig = build_figure(cols, diagnose(cols), smooth=10)
    try:
        assert [a.get_title() for a in fig.axes] == list(PANEL_TITLES)
        for ax in fig.axes[:5]:
            assert ax.get_xlabel() == "step (iteration)" and ax.get_ylabel()
            assert ax.get_legend() is not None
            assert [c.get_xlabel() for c in ax.child_axes] == ["epoch"]
        labels = [t.get_text() for t in fig.axes[2].get_legend().get_texts()]
        assert "50% (equilibrium)" in labels
        assert "0.3-3.0 (balanced)" in [t.get_text() for t in
                                        fig.axes[3].get_legend().get_texts()]
        text = " ".join(t.get_text() for t in fig.axes[5].texts)
        assert "Final Stats" in text and "Status Assessment" in text
    finally:
        plt.close(fig)


def test_moving_average():
    assert moving_average([1, 2, 3, 4], 2).tolist() == [1, 1.5, 2.5, 3.5]
    assert moving_average([5.0], 10).tolist() == [5.0]


def test_analyze_a_finished_run(finished_run):
    out = finished_run.out
    (out / layout.ANALYSIS_FILE).unlink()
    proc = run_cli(["analyze", "--out", str(out), "--window", "8", "--smooth", "3"])
    assert proc.returncode == 0, proc.stderr
    assert "Final Stats (last 8 iterations):" in proc.stdout
    assert (out / layout.ANALYSIS_FILE).exists()
    # The report is the diagnostics of the run's own last 8 rows.
    columns = pq.read_table(out / STATS_FILE).to_pydict()
    info = json.loads((out / layout.DIAGNOSTICS_FILE).read_text())
    assert info["balance_score"] == pytest.approx(balance_score(window_stats(columns, 8)))


@pytest.mark.slow
def test_analyze_a_run_that_is_still_training(tmp_path, data_dir):
    out, log = tmp_path / "run", tmp_path / "run.log"
    args = tiny_train_args(out, data_dir, epochs=100, checkpoint_every=0)
    with background(args, log) as proc:
        wait_for_text(log, "[Epoch 1] done", proc)  # stats of two epochs are on disk
        analysis = run_cli(["analyze", "--out", str(out)])
        still_running = proc.poll() is None
    assert still_running
    assert analysis.returncode == 0, analysis.stderr
    assert "Status Assessment:" in analysis.stdout
    info = json.loads((out / layout.DIAGNOSTICS_FILE).read_text())
    assert info["iterations"] >= 16
    assert (out / layout.ANALYSIS_FILE).exists()


def _write_table(path, columns):
    pq.write_table(pa.table(columns), path)


@pytest.mark.parametrize("case, needle", [
    ("missing", "no statistics at"),
    ("no_run", "holds no run: none of the files a run writes"),
    ("empty", "holds no rows"),
    ("columns", "lacks column(s) g_loss"),
    ("corrupt", "is corrupt or unreadable"),
    ("not_a_dir", "is not a run directory"),
])
def test_analyze_bad_stats(tmp_path, case, needle):
    run = tmp_path / "run"
    run.mkdir()
    stats = run / STATS_FILE
    if case == "missing":  # a run that has not saved its stats yet
        (run / layout.CONFIG_FILE).write_text("epochs: 1\n")
    elif case == "empty":
        _write_table(stats, {k: pa.array([], pa.float64()) for k in rows(n=1)})
    elif case == "columns":
        cols = rows(n=20)
        del cols["g_loss"]
        _write_table(stats, cols)
    elif case == "corrupt":
        stats.write_bytes(b"PAR1 this is not parquet")
    elif case == "not_a_dir":
        run = tmp_path / "missing-run"
    proc = run_cli(["analyze", "--out", str(run)])
    assert proc.returncode == 1
    assert needle in one_line_error(proc)
