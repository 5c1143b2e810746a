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

from dcgan.io import json_safe
from dcgan.losses import BCELoss, LossProfile

DEFAULT_WINDOW = 100  # the seed's "last 100 iterations"
LONG_WINDOW = 500  # for "D accuracy > 95% over a long window"
# The seed's loss and its bands: BCE's profile (dcgan.losses), the default of every function
# here; a run's own loss passes its profile.
SEED_PROFILE = BCELoss(0.1).profile
FLOOR_MARGIN = 0.05  # "at the floor" = within this many nats of the smallest possible loss
UNSTABLE_CV = 0.5  # loss standard deviation / mean over the window
COLLAPSE_RATIO = 0.5  # sample diversity / real-image diversity below this = collapse

REQUIRED_COLUMNS = ("step", "epoch", "d_loss", "g_loss", "d_real_acc", "d_fake_acc")


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
    profile: LossProfile = SEED_PROFILE
    extra: dict = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict:
        p = self.profile
        window = asdict(self.window) | {"d_acc": self.window.d_acc}
        if p.ratio_band is None:  # G's loss may be negative: the ratio means nothing
            window["loss_ratio"] = None
        return {"window": window,
                "balance_score": self.balance_score,
                "loss": p.name, "loss_floor": p.d_floor,
                "bands": {"loss_ratio": p.ratio_band, "accuracy": p.acc_band,
                          "loss": p.loss_band, "d_too_strong": p.d_too_strong},
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


def balance_score(ws: WindowStats, profile: LossProfile = SEED_PROFILE) -> float:
    """How far a window is from balanced training: 0 is balanced, higher is worse.

    score = loss term                                 (BCE: |ln(G/D loss ratio)|, 0 when the
                                                       losses are equal; the loss's profile
                                                       says what it is for other losses)
          + dist(real_acc, [0.6, 0.9]) + dist(fake_acc, [0.6, 0.9])
          + 4 * max(0, d_acc - 0.9)                   (extra: D too strong)

    The bands are the profile's; a term whose band the loss does not have is 0.

    The log makes "G twice D" and "D twice G" equally bad and grows slowly, so one noisy
    side does not swamp the rest; accuracies are fractions, so a 10-point excursion outside
    the seed's 60-90% band costs 0.1. A discriminator above 90% costs five times as much as
    the band alone because it starves the generator of gradient (the seed's most common
    failure). Inputs are window means, which keeps the score steady from step to step.
    """
    p = profile
    score = p.loss_balance(ws.g_loss, ws.d_loss) if p.loss_balance is not None else 0.0
    if not math.isfinite(score):
        return math.inf
    if p.acc_band is not None:
        score += _band_distance(ws.real_acc, p.acc_band) + _band_distance(ws.fake_acc, p.acc_band)
    if p.d_too_strong is not None:
        score += 4 * max(0.0, ws.d_acc - p.d_too_strong)
    return score


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def assess(ws: WindowStats, profile: LossProfile = SEED_PROFILE) -> list[Check]:
    """The seed's status checks plus the failure modes it lists (losses-only ones), each
    against the loss's own profile; a check whose rule the loss does not have is not made."""
    checks = []
    if profile.ratio_band is not None:
        checks.append(_ratio_check(ws, profile.ratio_band))
    if profile.acc_band is not None:
        checks.append(_accuracy_check(ws, profile.acc_band))
    if profile.loss_band is not None:
        checks.append(_loss_band_check(ws, profile.loss_band))
    if profile.d_too_strong is not None:
        checks.append(_strength_check(ws, profile.d_too_strong))
    if profile.d_floor is not None or profile.d_dominant is not None:
        checks.append(_vanishing_check(ws, profile))
    if profile.stable_losses:
        checks.append(_instability_check(ws, profile.stable_losses))
    return checks


def _ratio_check(ws: WindowStats, band: tuple[float, float]) -> Check:
    lo, hi = band
    if lo <= ws.loss_ratio <= hi:
        return Check("loss_ratio", True, f"loss ratio G/D {ws.loss_ratio:.2f} is within {lo}-{hi}: "
                                         "G and D are evenly matched")
    side = "G's loss dwarfs D's (D dominates)" if ws.loss_ratio > hi else \
        "D's loss dwarfs G's (G dominates)"
    return Check("loss_ratio", False,
                 f"loss ratio G/D {ws.loss_ratio:.2f} is outside {lo}-{hi}: "
                 f"unbalanced training, {side}",
                 "adjust the learning rates (g_lr/d_lr) or check the network design")


def _band_text(band: tuple[float, float]) -> str:
    return f"{100 * band[0]:.0f}-{100 * band[1]:.0f}%"


def _accuracy_check(ws: WindowStats, band: tuple[float, float]) -> Check:
    lo, hi = band
    accs = {"real": ws.real_acc, "fake": ws.fake_acc}
    if all(lo <= a <= hi for a in accs.values()):
        return Check("accuracy_band", True,
                     f"D accuracy real {_pct(ws.real_acc)}, fake {_pct(ws.fake_acc)}: "
                     f"within {_band_text(band)}, both networks have room to learn")
    low = [k for k, a in accs.items() if a < lo]
    high = [k for k, a in accs.items() if a > hi]
    parts = ([f"{'/'.join(low)} below {100 * lo:.0f}% (G fools D or D is not learning)"]
             if low else []) \
        + ([f"{'/'.join(high)} above {100 * hi:.0f}% (D separates them easily)"] if high else [])
    advice = "lower d_lr or raise dropout" if high and not low else \
        "raise d_lr, lower dropout, or train longer: D has to learn first"
    return Check("accuracy_band", False,
                 f"D accuracy real {_pct(ws.real_acc)}, fake {_pct(ws.fake_acc)}: "
                 + "; ".join(parts), advice)


def _loss_band_check(ws: WindowStats, band: tuple[float, float]) -> Check:
    lo, hi = band
    losses = {"G": ws.g_loss, "D": ws.d_loss}
    out = {k: v for k, v in losses.items() if not lo <= v <= hi}
    if not out:
        return Check("loss_band", True, f"losses G {ws.g_loss:.3f}, D {ws.d_loss:.3f} "
                                        f"are within {lo}-{hi}")
    desc = ", ".join(f"{k} {v:.3f} {'below' if v < lo else 'above'} the band"
                     for k, v in out.items())
    return Check("loss_band", False, f"losses outside {lo}-{hi}: {desc}",
                 "a side whose loss is far below the other's is winning: slow it "
                 "down (its learning rate) or strengthen the other")


def _strength_check(ws: WindowStats, limit: float) -> Check:
    if ws.d_acc > limit:
        return Check("discriminator_strength", False,
                     f"D accuracy {_pct(ws.d_acc)} > {100 * limit:.0f}%: the discriminator is "
                     "too strong and the generator struggles to improve",
                     "increase dropout, lower d_lr")
    return Check("discriminator_strength", True,
                 f"D accuracy {_pct(ws.d_acc)} <= {100 * limit:.0f}%: the generator gets "
                 "gradient")


def _vanishing_check(ws: WindowStats, profile: LossProfile) -> Check:
    floor = profile.d_floor
    at_floor = floor is not None and ws.d_loss < floor + FLOOR_MARGIN
    dominant = profile.d_dominant is not None and ws.long_d_acc > profile.d_dominant
    if at_floor or dominant:
        if at_floor:
            why = f"D loss {ws.d_loss:.3f} is at its floor {floor:.3f} ({profile.floor_note})"
        else:
            why = (f"D accuracy {_pct(ws.long_d_acc)} > {100 * profile.d_dominant:.0f}% over "
                   f"the last {min(LONG_WINDOW, ws.last_step + 1)} iterations")
        return Check("vanishing_gradients", False, f"vanishing generator gradients: {why}",
                     "increase label smoothing or dropout, lower d_lr")
    shown = f"{floor:.3f}" if floor is not None else "none"
    return Check("vanishing_gradients", True,
                 f"no vanishing gradients: D loss {ws.d_loss:.3f} is above its floor {shown}")


def _instability_check(ws: WindowStats, losses: tuple[str, ...]) -> Check:
    spreads = {"g": (ws.g_loss_std, ws.g_loss), "d": (ws.d_loss_std, ws.d_loss)}
    cv = max((std / mean if mean > 0 else 0.0) for std, mean in
             (spreads[k] for k in losses))
    if cv > UNSTABLE_CV:
        return Check("instability", False,
                     f"unstable training: loss standard deviation is {cv:.2f} of its "
                     f"mean over the last {ws.n} iterations",
                     "lower the learning rates or increase batch_size")
    return Check("instability", True,
                 f"stable: loss spread {cv:.2f} of the mean (limit {UNSTABLE_CV})")


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


def diagnose(columns: Mapping[str, Sequence], profile: LossProfile = SEED_PROFILE,
             window: int = DEFAULT_WINDOW, *, samples: torch.Tensor | None = None,
             real: torch.Tensor | None = None, quality: dict | None = None) -> Diagnosis:
    """All of the above for one window; ``quality`` is the latest sample-quality row."""
    ws = window_stats(columns, window)
    checks = assess(ws, profile)
    extra: dict = {"quality": quality} if quality else {}
    if samples is not None and real is not None:
        check, ratio = diversity_check(samples, real)
        checks.append(check)
        extra["diversity_ratio"] = ratio
    return Diagnosis(ws, checks, balance_score(ws, profile), profile, extra)


def health_by_epoch(columns: Mapping[str, Sequence], profile: LossProfile = SEED_PROFILE,
                    window: int = DEFAULT_WINDOW) -> list[dict]:
    """The status assessment at the end of every epoch (and at the last row), as the epoch
    log gives it: a run is healthy over its whole length only if every entry is."""
    steps, epochs = list(columns["step"]), list(columns["epoch"])
    ends = [i for i in range(len(steps)) if i + 1 == len(steps) or epochs[i + 1] != epochs[i]]
    out = []
    for i in ends:
        ws = window_stats({c: list(columns[c][:i + 1]) for c in REQUIRED_COLUMNS}, window)
        checks = assess(ws, profile)
        out.append({"step": int(steps[i]) + 1, "epoch": int(epochs[i]),
                    "healthy": all(c.passed for c in checks),
                    "failed": [c.name for c in checks if not c.passed],
                    "real_acc": ws.real_acc, "fake_acc": ws.fake_acc,
                    "loss_ratio": (json_safe(ws.loss_ratio) if profile.ratio_band is not None
                                   else None),
                    "balance_score": json_safe(balance_score(ws, profile))})
    return out


def status_line(diag: Diagnosis) -> str:
    """One line for the epoch log."""
    ws = diag.window
    failed = [c.name for c in diag.checks if not c.passed]
    state = "healthy" if not failed else "issues: " + ", ".join(failed)
    ratio = f" | ratio {ws.loss_ratio:.2f}" if diag.profile.ratio_band is not None else ""
    return (f"status: balance {diag.balance_score:.3f}{ratio} | "
            f"acc real {_pct(ws.real_acc)} fake {_pct(ws.fake_acc)} | {state}")


def _quality_lines(q: dict | None) -> list[str]:
    if not q:
        return []
    return [f"Sample quality (step {q['step']}, {q['n']} samples, classifier {q['classifier']}):",
            f"  FID: {q['fid']:.2f}   Inception Score: {q['inception_score']:.2f} / 10",
            f"  Classes covered: {q['classes_covered']}/10   Largest class: "
            f"{q['largest_class_fraction']:.3f}   Mean confidence: {q['mean_confidence']:.3f}"]


def _loss_lines(p: LossProfile) -> list[str]:
    """What the numbers mean, for a loss other than the seed's (whose report stays as it is)."""
    if p.name == "bce":
        return []
    return [f"  Loss: {p.name}: {p.meaning}",
            f"  Accuracy: {p.accuracy_meaning}",
            *(f"  Note: {note}" for note in p.notes)]


def report(diag: Diagnosis) -> str:
    """The seed's final report (with what the numbers mean when the loss is not BCE)."""
    ws, p = diag.window, diag.profile
    ratio = ([f"  Loss ratio (G/D): {ws.loss_ratio:.3f}"] if p.ratio_band is not None else [])
    lines = [f"Final Stats (last {ws.n} iterations):",
             *_loss_lines(p),
             f"  G loss: {ws.g_loss:.4f}",
             f"  D loss: {ws.d_loss:.4f}",
             f"  Real accuracy: {_pct(ws.real_acc)}",
             f"  Fake accuracy: {_pct(ws.fake_acc)}",
             *ratio,
             f"  Loss difference (G-D): {ws.loss_diff:+.4f}",
             f"  Balance score: {diag.balance_score:.4f} (0 = balanced, lower is better)",
             *_quality_lines(diag.extra.get("quality")),
             "Status Assessment:"]
    for c in diag.checks:
        lines.append(f"  {'✓' if c.passed else '✗'} {c.message}")
        if not c.passed and c.advice:
            lines.append(f"      advice: {c.advice}")
    return "\n".join(lines)
