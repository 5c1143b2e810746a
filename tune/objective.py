"""What a trial reports and how trials are ranked. Pure functions over a trial's stats.

``balance_score`` comes from the diagnostics module (the report's code), judged by the
trial's loss profile (``dcgan.losses``); nothing here re-implements it. The three objectives
(lower is better):

* ``balance`` (default): balance_score, guarded by sample quality (below);
* ``fid``: the best FID so far (of G or its moving average);
* ``combined``: balance_score + ln(FID): a tenfold FID improvement is worth 2.3 balance
  units, about the cost of one network clearly dominating the other.

The guard against degenerate "balanced" runs (a collapsed generator facing a confused
discriminator scores well on balance alone):

* while a trial runs, a report whose generator covers fewer than 10 digit classes (or
  ``--min-classes``: very short searches cannot reach 10, docs/tuning.md) gets
  ``COLLAPSE_PENALTY + 10 * missing classes + ln(FID)`` added to its objective, so ASHA
  prefers every trial that draws all digits and, among those that do not yet, the ones
  closest to it;
* after the search, a trial is **failed** (never the best) when it did not train its whole
  budget (stopped early by the scheduler, or errored), its final evaluation
  covers fewer than 10 classes, or its FID is more than ``FID_GUARD_FACTOR`` times the best
  final FID among the trials (the best trial by FID is never failed by this rule).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from dcgan.diagnostics import SEED_PROFILE, balance_score, window_stats
from dcgan.features import CLASSES
from dcgan.losses import LossProfile
from dcgan.stats import best_overall
from dcgan_tune.options import OBJECTIVES

COLLAPSE_PENALTY = 100.0
FID_GUARD_FACTOR = 2.0
ALL_CLASSES = CLASSES  # a trial that draws every digit


def trial_metrics(columns: Mapping[str, Sequence], evals: Sequence[Mapping],
                  metric: str, min_classes: int = ALL_CLASSES,
                  profile: LossProfile = SEED_PROFILE) -> dict[str, float]:
    """One report: the window values, the latest evaluation and the objective."""
    ws = window_stats(columns)
    out = {"balance_score": balance_score(ws, profile), "d_loss": ws.d_loss, "g_loss": ws.g_loss,
           "loss_ratio": ws.loss_ratio, "d_real_acc": ws.real_acc, "d_fake_acc": ws.fake_acc}
    if evals:  # the best evaluation so far (of G or its moving average), not the last
        q = best_overall(evals)
        out.update(fid=float(q["fid"]), inception_score=float(q["inception_score"]),
                   classes_covered=int(q["classes_covered"]), eval_step=int(q["step"]),
                   eval_generator=str(q.get("generator", "raw")))
    out["objective"] = objective(out, metric, min_classes)
    return out


def objective(row: Mapping[str, float], metric: str, min_classes: int = ALL_CLASSES) -> float:
    fid = row.get("fid")
    if metric == "balance":
        value = row["balance_score"]
    elif metric == "fid":
        value = fid if fid is not None else math.inf
    elif metric == "combined":
        value = row["balance_score"] + (math.log(fid) if fid else math.inf)
    else:
        raise ValueError(f"metric must be one of {OBJECTIVES}")
    covered = row.get("classes_covered", ALL_CLASSES)
    if covered < min_classes:
        # Ranked among themselves by how many digits are missing, then by FID: early in a
        # search every trial may be penalised, and ASHA must still keep the learners.
        value += COLLAPSE_PENALTY + 10 * (min_classes - covered) + (math.log(fid) if fid else 0)
    # Tune's schedulers compare numbers: a non-finite objective becomes a large finite one.
    return value if math.isfinite(value) else 1e9


def guard(rows: Sequence[Mapping], budget_steps: int,
          min_classes: int = ALL_CLASSES) -> list[str]:
    """For each trial's final row, "" when it may win, else why it is failed. Trials the
    scheduler stopped early cannot win: early training looks balanced (both networks near
    chance) while its samples are poor."""
    fids = [r["fid"] for r in rows if is_finite_number(r.get("fid"))]
    best_fid = min(fids) if fids else None
    verdicts = []
    for r in rows:
        if r.get("status") not in (None, "TERMINATED"):
            verdicts.append(f"trial {str(r.get('status')).lower()}")
        elif not is_finite_number(r.get("objective")):
            verdicts.append("no result")
        elif r.get("step", 0) < budget_steps:
            verdicts.append(f"stopped early at step {r.get('step')}")
        elif not is_finite_number(r.get("fid")):
            verdicts.append("never evaluated")
        elif r.get("classes_covered", 0) < min_classes:
            verdicts.append(f"covers {r.get('classes_covered')}/10 classes "
                            f"(fewer than {min_classes})")
        elif best_fid is not None and r["fid"] > FID_GUARD_FACTOR * best_fid:
            verdicts.append(f"FID {r['fid']:.1f} > {FID_GUARD_FACTOR:g}x the best "
                            f"({best_fid:.1f})")
        else:
            verdicts.append("")
    return verdicts


def is_finite_number(value) -> bool:
    """A trial row's value is a usable number: not None (never reported), NaN or inf."""
    return isinstance(value, int | float) and math.isfinite(value)
