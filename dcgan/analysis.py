"""The seed's 6-panel training analysis figure (``dcgan_training_analysis.png``) and the
sample-quality figure (``dcgan_quality.png``)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dcgan.diagnostics import Diagnosis, report
from dcgan.io import atomic_write_bytes
from dcgan.stats import best_overall

PANEL_TITLES = ("Raw losses", "Smoothed losses", "Discriminator accuracy",
                "Loss ratio G/D", "Loss difference G - D", "Diagnostics")
D_COLOR, G_COLOR = "tab:blue", "tab:orange"


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over ``window`` points (shorter at the start, same length as input)."""
    x = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(x) == 0:
        return x
    c = np.cumsum(np.insert(x, 0, 0.0))
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def default_smoothing(n_rows: int) -> int:
    return int(min(100, max(1, n_rows // 20)))


def _rates_axis(ax, steps: np.ndarray, columns: Mapping[str, Sequence]) -> None:
    """D's and G's learning rates on a right-hand axis, when a schedule or the balance
    controller changed them during the run (stats from before the rate columns have none)."""
    rates = {name: np.asarray(columns.get(name, []), dtype=float) for name in ("g_lr", "d_lr")}
    if any(len(r) != len(steps) or not np.isfinite(r).any() for r in rates.values()):
        return
    if all(np.nanmax(r) == np.nanmin(r) for r in rates.values()):
        return  # constant rates: nothing to show
    right = ax.twinx()
    right.plot(steps, rates["d_lr"], color=D_COLOR, lw=1, ls="-.", label="D learning rate")
    right.plot(steps, rates["g_lr"], color=G_COLOR, lw=1, ls=":", label="G learning rate")
    right.set_ylim(0, 1.05 * max(float(np.nanmax(r)) for r in rates.values()))
    right.set_ylabel("learning rate (auto-balance, decay)")
    right.legend(loc="lower right", fontsize=8)


AUGMENT_TITLE = "Augmentation of what D sees (p) and D's overfitting (r)"


def _augment_columns(columns: Mapping[str, Sequence], n: int
                     ) -> tuple[np.ndarray, np.ndarray] | None:
    """(p, r) of a run that augments (a finite p in every row), else None."""
    p = np.asarray(columns.get("augment_p", []), dtype=float)
    if len(p) != n or n == 0 or not np.isfinite(p).all():
        return None
    r = np.asarray(columns.get("augment_r", [np.nan] * n), dtype=float)
    return p, r


def _augment_panel(ax, steps: np.ndarray, p: np.ndarray, r: np.ndarray,
                   per_epoch: int) -> None:
    ax.plot(steps, p, color="tab:blue", lw=1.4, label="p (probability of each transform)")
    if np.isfinite(r).any():
        ax.plot(steps, r, color="tab:orange", lw=1, alpha=0.8,
                label="r = E[sign D(x)] on real images (controller's latest)")
    ax.set_ylim(-1.05, 1.05)
    ax.axhline(0, color="black", ls="--", lw=0.8)
    ax.set_ylabel("p, r")
    _dress(ax, AUGMENT_TITLE, per_epoch)


def _dress(ax, title: str, per_epoch: int) -> None:
    """A step panel's title, axes, grid, legend and the epoch scale on top."""
    ax.set_title(title)
    ax.set_xlabel("step (iteration)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    top = ax.secondary_xaxis("top", functions=(lambda s: s / per_epoch,
                                               lambda e: e * per_epoch))
    top.set_xlabel("epoch", fontsize=8)


def build_figure(columns: Mapping[str, Sequence], diag: Diagnosis, smooth: int | None = None,
                 title: str = "DCGAN training analysis"):
    """Return the matplotlib Figure (6 panels, titles, axis labels, legends)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.asarray(columns["step"])
    d_loss, g_loss = np.asarray(columns["d_loss"]), np.asarray(columns["g_loss"])
    real_acc, fake_acc = np.asarray(columns["d_real_acc"]), np.asarray(columns["d_fake_acc"])
    n = len(steps)
    k = smooth or default_smoothing(n)
    per_epoch = max(int(max(columns.get("batch", [0]) or [0])) + 1, 1)

    augment = _augment_columns(columns, n)
    # The seed's six panels; a run that augments what D sees gets a row for p and r below.
    rows = 4 if augment else 3
    fig, axes = plt.subplots(rows, 2, figsize=(15, 14 + 4 * (rows - 3)), layout="constrained")
    fig.suptitle(f"{title} ({n} iterations, {n / per_epoch:.1f} epochs)", fontsize=14)
    ax = axes.flat

    ax[0].plot(steps, d_loss, color=D_COLOR, lw=0.6, alpha=0.7, label="D loss")
    ax[0].plot(steps, g_loss, color=G_COLOR, lw=0.6, alpha=0.7, label="G loss")
    profile = diag.profile  # what this run's loss numbers mean (dcgan.losses)
    loss_label = profile.d_loss_label
    ax[0].set_ylabel(loss_label)

    ax[1].plot(steps, moving_average(d_loss, k), color=D_COLOR, lw=1.6, label="D loss")
    ax[1].plot(steps, moving_average(g_loss, k), color=G_COLOR, lw=1.6, label="G loss")
    floor = profile.d_floor
    if floor is not None:
        what = ("BCE floor {:.3f} (label smoothing)" if profile.name == "bce" else
                f"{profile.name} floor {{:.3f}} ({profile.floor_note.split(':')[0]})")
        ax[1].axhline(floor, color="gray", ls=":", lw=1, label=what.format(floor))
    ax[1].set_ylabel(f"{loss_label.split(' (')[0]}, moving average of {k}")

    ax[2].plot(steps, 100 * moving_average(real_acc, k), color="tab:green", lw=1.4,
               label="real classified real")
    ax[2].plot(steps, 100 * moving_average(fake_acc, k), color="tab:red", lw=1.4,
               label="fake classified fake")
    ax[2].axhline(50, color="black", ls="--", lw=1, label="50% (equilibrium)")
    if profile.acc_band is not None:
        lo, hi = profile.acc_band
        ax[2].axhspan(100 * lo, 100 * hi, color="tab:green", alpha=0.08,
                      label=f"{100 * lo:.0f}-{100 * hi:.0f}% (healthy)")
    ax[2].set_ylim(0, 100)
    ax[2].set_ylabel(f"accuracy (%), moving average of {k}")
    _rates_axis(ax[2], steps, columns)

    ratio = moving_average(g_loss, k) / np.maximum(moving_average(d_loss, k), 1e-12)
    ax[3].plot(steps, ratio, color="tab:purple", lw=1.4, label="G loss / D loss")
    if profile.ratio_band is not None:
        lo, hi = profile.ratio_band
        ax[3].axhspan(lo, hi, color="tab:green", alpha=0.08, label=f"{lo}-{hi} (balanced)")
        ax[3].axhline(1, color="black", ls="--", lw=1, label="1 (equal losses)")
        ax[3].set_ylim(0, max(3.5, float(np.nanmax(ratio)) * 1.1 if n else 3.5))
    else:  # a loss that can be negative: the ratio is shown, but judged by nothing
        ax[3].axhline(0, color="black", ls="--", lw=1, label=f"no healthy band for {profile.name}")
    ax[3].set_ylabel("ratio")

    ax[4].plot(steps, moving_average(g_loss - d_loss, k), color="tab:brown", lw=1.4,
               label="G loss - D loss")
    ax[4].axhline(0, color="black", ls="--", lw=1, label="0 (evenly matched)")
    ax[4].set_ylabel("difference (nats)" if profile.name == "bce" else "difference")

    for a, name in zip(ax[:5], PANEL_TITLES[:5], strict=True):
        _dress(a, name, per_epoch)

    if augment:
        _augment_panel(ax[6], steps, *augment, per_epoch)
        ax[7].axis("off")

    panel = ax[5]
    panel.set_title(PANEL_TITLES[5])
    panel.axis("off")
    verdict = "HEALTHY" if diag.healthy else "NEEDS ATTENTION"
    panel.text(0.0, 1.0, f"Status: {verdict}\n\n" + _wrap(report(diag)), va="top",
               ha="left", family="monospace", fontsize=8, transform=panel.transAxes,
               color="darkgreen" if diag.healthy else "darkred")
    return fig


def _wrap(text: str, width: int = 88) -> str:
    import textwrap

    out = []
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip())
        out.extend(textwrap.wrap(line, width=width, subsequent_indent=" " * (indent + 2))
                   or [""])
    return "\n".join(out)


def save_analysis(columns: Mapping[str, Sequence], diag: Diagnosis, path: str | Path,
                  smooth: int | None = None, title: str = "DCGAN training analysis") -> None:
    import matplotlib.pyplot as plt

    fig = build_figure(columns, diag, smooth, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


QUALITY_PANELS = ("FID by step", "FID by training time", "Inception Score by step",
                  "Inception Score by training time")
GENERATOR_STYLE = {"raw": ("G", "tab:blue"), "ema": ("moving average of G", "tab:green")}


def build_quality_figure(evals: Sequence[Mapping], title: str = "Sample quality"):
    """FID and IS of every evaluation against step and against training time (seconds of
    training, across resumes), G and its moving average apart, the best point starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    best = best_overall(evals)
    for ax, panel in zip(axes.flat, QUALITY_PANELS, strict=True):
        key = "fid" if panel.startswith("FID") else "inception_score"
        x_key = "step" if panel.endswith("step") else "time"
        for name, (label, color) in GENERATOR_STYLE.items():
            rows = [r for r in evals if r.get("generator", "raw") == name
                    and r.get(x_key) is not None]
            if rows:
                ax.plot([r[x_key] for r in rows], [r[key] for r in rows], "o-", color=color,
                        label=label, markersize=3)
        if best.get(x_key) is not None:
            ax.plot([best[x_key]], [best[key]], "*", color="tab:red", markersize=14,
                    label=f"best (FID {best['fid']:.2f})")
        if key == "fid":
            ax.set_yscale("log")
        ax.set_title(panel)
        ax.set_xlabel("step" if x_key == "step" else "training time (s)")
        ax.set_ylabel("FID (lower is better)" if key == "fid" else "IS (max 10)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_quality_figure(evals: Sequence[Mapping], path: str | Path,
                        title: str = "Sample quality") -> None:
    import matplotlib.pyplot as plt

    fig = build_quality_figure(evals, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
