"""Training diagnostics: pure functions over stats rows (the seed's status assessment).

Everything here reads the per-iteration statistics (the Parquet columns) and returns plain
data; the end-of-epoch and final reports (``dcgan.report``), ``dcgan analyze`` and its
figure, the Prometheus exporter and the hyperparameter search's objectives all call these
same functions. ``balance_score`` is the one balance objective.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch

DEFAULT_WINDOW = 100  # the seed's "last 100 iterations"
LONG_WINDOW = 500  # for "D accuracy > 95% over a long window"
RATIO_BAND = (0.3, 3.0)
ACC_BAND = (0.60, 0.90)
LOSS_BAND = (0.5, 1.5)
D_TOO_STRONG = 0.90
D_DOMINANT = 0.95
FLOOR_MARGIN = 0.05  # "at the floor" = within this many nats of the smallest possible loss
UNSTABLE_CV = 0.5  # loss standard deviation / mean over the window
COLLAPSE_RATIO = 0.5  # sample diversity / real-image diversity below this = collapse

REQUIRED_COLUMNS = ("step", "epoch", "d_loss", "g_loss", "d_real_acc", "d_fake_acc")


def bce_floor(label_smoothing: float) -> float:
    """Smallest possible BCE against a smoothed target t = 1 - s (or s): its entropy H(s).

    With the seed's s = 0.1 it is 0.325 nats, so neither L_D (a mean of two such terms) nor
    L_G can go below 0.325: a "loss near 0" never happens; "near 0.325" means saturation.
    """
    s = label_smoothing
    if s <= 0:
        return 0.0
    return -(s * math.log(s) + (1 - s) * math.log(1 - s))


def d_loss_floor(label_smoothing: float, one_sided: bool = False) -> float:
    """Smallest possible L_D: the mean of its two terms' floors. One-sided smoothing (fake
    target 0) takes the fake term's floor to 0, so L_D can go down to H(s) / 2."""
    real = bce_floor(label_smoothing)
    return real / 2 if one_sided else real


@dataclass
class WindowStats:
    """Means (and spreads) of the last ``n`` iterations."""

    n: int
    first_step: int
    last_step: int
    g_loss: float
    d_loss: float
    real_acc: float
    fake_acc: float
    loss_ratio: float  # mean G loss / mean D loss (ratio of means: robust to noisy steps)
    loss_diff: float  # mean G loss - mean D loss
    g_loss_std: float
    d_loss_std: float
    long_d_acc: float  # mean D accuracy over the last LONG_WINDOW iterations

    @property
    def d_acc(self) -> float:
        return (self.real_acc + self.fake_acc) / 2


@dataclass
class Check:
    name: str
    passed: bool
    message: str
    advice: str = ""


@dataclass
class Diagnosis:
    window: WindowStats
    checks: list[Check]
    balance_score: float
    label_smoothing: float
    extra: dict = field(default_factory=dict)
    one_sided: bool = False

    @property
    def healthy(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict:
        return {"window": asdict(self.window) | {"d_acc": self.window.d_acc},
                "balance_score": self.balance_score,
                "label_smoothing": self.label_smoothing,
                "one_sided_smoothing": self.one_sided,
                "loss_floor": d_loss_floor(self.label_smoothing, self.one_sided),
                "healthy": self.healthy,
                "checks": [asdict(c) for c in self.checks], **self.extra}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _std(values: Sequence[float]) -> float:
    m = _mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def window_stats(columns: Mapping[str, Sequence], window: int = DEFAULT_WINDOW) -> WindowStats:
    """Aggregate the last ``window`` rows of stats columns (as in the Parquet file)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"stats lack column(s) {', '.join(missing)}")
    n_rows = len(columns["d_loss"])
    if n_rows == 0:
        raise ValueError("stats hold no rows yet")
    n = min(window, n_rows)
    last = {c: list(columns[c][-n:]) for c in REQUIRED_COLUMNS}
    long_n = min(LONG_WINDOW, n_rows)
    long_acc = [(r + f) / 2 for r, f in zip(columns["d_real_acc"][-long_n:],
                                            columns["d_fake_acc"][-long_n:], strict=True)]
    g, d = _mean(last["g_loss"]), _mean(last["d_loss"])
    return WindowStats(
        n=n, first_step=int(last["step"][0]), last_step=int(last["step"][-1]),
        g_loss=g, d_loss=d, real_acc=_mean(last["d_real_acc"]), fake_acc=_mean(last["d_fake_acc"]),
        loss_ratio=g / d if d > 0 else math.inf, loss_diff=g - d,
        g_loss_std=_std(last["g_loss"]), d_loss_std=_std(last["d_loss"]),
        long_d_acc=_mean(long_acc))


def _band_distance(value: float, band: tuple[float, float]) -> float:
    lo, hi = band
    return max(0.0, lo - value) + max(0.0, value - hi)


def balance_score(ws: WindowStats) -> float:
    """How far a window is from balanced training: 0 is balanced, higher is worse.

    score = |ln(G/D loss ratio)|                      (0 when the losses are equal)
          + dist(real_acc, [0.6, 0.9]) + dist(fake_acc, [0.6, 0.9])
          + 4 * max(0, d_acc - 0.9)                   (extra: D too strong)

    The log makes "G twice D" and "D twice G" equally bad and grows slowly, so one noisy
    side does not swamp the rest; accuracies are fractions, so a 10-point excursion outside
    the seed's 60-90% band costs 0.1. A discriminator above 90% costs five times as much as
    the band alone because it starves the generator of gradient (the seed's most common
    failure). Inputs are window means, which keeps the score steady from step to step.
    """
    if not (math.isfinite(ws.loss_ratio) and ws.loss_ratio > 0):
        return math.inf
    return (abs(math.log(ws.loss_ratio))
            + _band_distance(ws.real_acc, ACC_BAND) + _band_distance(ws.fake_acc, ACC_BAND)
            + 4 * max(0.0, ws.d_acc - D_TOO_STRONG))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def assess(ws: WindowStats, label_smoothing: float = 0.1,
           one_sided: bool = False) -> list[Check]:
    """The seed's status checks plus the failure modes it lists (losses-only ones)."""
    checks = []
    lo, hi = RATIO_BAND
    if lo <= ws.loss_ratio <= hi:
        checks.append(Check("loss_ratio", True,
                            f"loss ratio G/D {ws.loss_ratio:.2f} is within {lo}-{hi}: "
                            "G and D are evenly matched"))
    else:
        side = "G's loss dwarfs D's (D dominates)" if ws.loss_ratio > hi else \
            "D's loss dwarfs G's (G dominates)"
        checks.append(Check("loss_ratio", False,
                            f"loss ratio G/D {ws.loss_ratio:.2f} is outside {lo}-{hi}: "
                            f"unbalanced training, {side}",
                            "adjust the learning rates (g_lr/d_lr) or check the network design"))

    lo, hi = ACC_BAND
    accs = {"real": ws.real_acc, "fake": ws.fake_acc}
    if all(lo <= a <= hi for a in accs.values()):
        checks.append(Check("accuracy_band", True,
                            f"D accuracy real {_pct(ws.real_acc)}, fake {_pct(ws.fake_acc)}: "
                            "within 60-90%, both networks have room to learn"))
    else:
        low = [k for k, a in accs.items() if a < lo]
        high = [k for k, a in accs.items() if a > hi]
        parts = ([f"{'/'.join(low)} below 60% (G fools D or D is not learning)"] if low else []) \
            + ([f"{'/'.join(high)} above 90% (D separates them easily)"] if high else [])
        advice = "lower d_lr or raise dropout" if high and not low else \
            "raise d_lr, lower dropout, or train longer: D has to learn first"
        checks.append(Check("accuracy_band", False,
                            f"D accuracy real {_pct(ws.real_acc)}, fake {_pct(ws.fake_acc)}: "
                            + "; ".join(parts), advice))

    lo, hi = LOSS_BAND
    losses = {"G": ws.g_loss, "D": ws.d_loss}
    out = {k: v for k, v in losses.items() if not lo <= v <= hi}
    if not out:
        checks.append(Check("loss_band", True, f"losses G {ws.g_loss:.3f}, D {ws.d_loss:.3f} "
                                               "are within 0.5-1.5"))
    else:
        desc = ", ".join(f"{k} {v:.3f} {'below' if v < lo else 'above'} the band"
                         for k, v in out.items())
        checks.append(Check("loss_band", False, f"losses outside 0.5-1.5: {desc}",
                            "a side whose loss is far below the other's is winning: slow it "
                            "down (its learning rate) or strengthen the other"))

    if ws.d_acc > D_TOO_STRONG:
        checks.append(Check("discriminator_strength", False,
                            f"D accuracy {_pct(ws.d_acc)} > 90%: the discriminator is too "
                            "strong and the generator struggles to improve",
                            "increase dropout, lower d_lr"))
    else:
        checks.append(Check("discriminator_strength", True,
                            f"D accuracy {_pct(ws.d_acc)} <= 90%: the generator gets gradient"))

    floor = d_loss_floor(label_smoothing, one_sided)
    at_floor = ws.d_loss < floor + FLOOR_MARGIN
    dominant = ws.long_d_acc > D_DOMINANT
    if at_floor or dominant:
        why = (f"D loss {ws.d_loss:.3f} is at its floor {floor:.3f} (label smoothing "
               f"{label_smoothing})" if at_floor else
               f"D accuracy {_pct(ws.long_d_acc)} > 95% over the last "
               f"{min(LONG_WINDOW, ws.last_step + 1)} iterations")
        checks.append(Check("vanishing_gradients", False,
                            f"vanishing generator gradients: {why}",
                            "increase label smoothing or dropout, lower d_lr"))
    else:
        checks.append(Check("vanishing_gradients", True,
                            f"no vanishing gradients: D loss {ws.d_loss:.3f} is above its "
                            f"floor {floor:.3f}"))

    cv = max(ws.g_loss_std / ws.g_loss if ws.g_loss > 0 else 0.0,
             ws.d_loss_std / ws.d_loss if ws.d_loss > 0 else 0.0)
    if cv > UNSTABLE_CV:
        checks.append(Check("instability", False,
                            f"unstable training: loss standard deviation is {cv:.2f} of its "
                            f"mean over the last {ws.n} iterations",
                            "lower the learning rates or increase batch_size"))
    else:
        checks.append(Check("instability", True,
                            f"stable: loss spread {cv:.2f} of the mean (limit {UNSTABLE_CV})"))
    return checks


def mean_pairwise_distance(images: torch.Tensor) -> float:
    """Mean L2 distance between all pairs of a batch (flattened)."""
    flat = images.detach().float().flatten(1)
    n = flat.shape[0]
    if n < 2:
        raise ValueError("need at least two images")
    dist = torch.cdist(flat, flat)
    return float(dist.sum() / (n * (n - 1)))


def diversity_check(samples: torch.Tensor, real: torch.Tensor) -> tuple[Check, float]:
    """Mode collapse: generated images much more alike than real ones."""
    ratio = mean_pairwise_distance(samples) / mean_pairwise_distance(real)
    if ratio < COLLAPSE_RATIO:
        return Check("mode_collapse", False,
                     f"possible mode collapse: samples are {ratio:.2f}x as diverse as real "
                     f"images (below {COLLAPSE_RATIO})",
                     "add noise, lower g_lr or d_lr, or restart from an earlier checkpoint"), ratio
    return Check("mode_collapse", True,
                 f"no mode collapse: sample diversity {ratio:.2f}x that of real images"), ratio


def diagnose(columns: Mapping[str, Sequence], label_smoothing: float = 0.1,
             window: int = DEFAULT_WINDOW, samples: torch.Tensor | None = None,
             real: torch.Tensor | None = None, quality: dict | None = None,
             one_sided: bool = False) -> Diagnosis:
    """All of the above for one window; ``quality`` is the latest sample-quality row."""
    ws = window_stats(columns, window)
    checks = assess(ws, label_smoothing, one_sided)
    extra: dict = {"quality": quality} if quality else {}
    if samples is not None and real is not None:
        check, ratio = diversity_check(samples, real)
        checks.append(check)
        extra["diversity_ratio"] = ratio
    return Diagnosis(ws, checks, balance_score(ws), label_smoothing, extra, one_sided)


def status_line(diag: Diagnosis) -> str:
    """One line for the epoch log."""
    ws = diag.window
    failed = [c.name for c in diag.checks if not c.passed]
    state = "healthy" if not failed else "issues: " + ", ".join(failed)
    return (f"status: balance {diag.balance_score:.3f} | ratio {ws.loss_ratio:.2f} | "
            f"acc real {_pct(ws.real_acc)} fake {_pct(ws.fake_acc)} | {state}")


def _quality_lines(q: dict | None) -> list[str]:
    if not q:
        return []
    return [f"Sample quality (step {q['step']}, {q['n']} samples, classifier {q['classifier']}):",
            f"  FID: {q['fid']:.2f}   Inception Score: {q['inception_score']:.2f} / 10",
            f"  Classes covered: {q['classes_covered']}/10   Largest class: "
            f"{q['largest_class_fraction']:.3f}   Mean confidence: {q['mean_confidence']:.3f}"]


def report(diag: Diagnosis) -> str:
    """The seed's final report."""
    ws = diag.window
    lines = [f"Final Stats (last {ws.n} iterations):",
             f"  G loss: {ws.g_loss:.4f}",
             f"  D loss: {ws.d_loss:.4f}",
             f"  Real accuracy: {_pct(ws.real_acc)}",
             f"  Fake accuracy: {_pct(ws.fake_acc)}",
             f"  Loss ratio (G/D): {ws.loss_ratio:.3f}",
             f"  Loss difference (G-D): {ws.loss_diff:+.4f}",
             f"  Balance score: {diag.balance_score:.4f} (0 = balanced, lower is better)",
             *_quality_lines(diag.extra.get("quality")),
             "Status Assessment:"]
    for c in diag.checks:
        lines.append(f"  {'✓' if c.passed else '✗'} {c.message}")
        if not c.passed and c.advice:
            lines.append(f"      advice: {c.advice}")
    return "\n".join(lines)
