"""Learning rates that change during a run: a linear decay over its last part, and the
automatic balance of D against G (both off by default: the seed's rates are constant).

Both are pure functions of the step and of the stats rows, so a resumed run applies the
same rates at the same steps; the controller's state travels in the full state. The rates
each step trained with are recorded in the stats (``g_lr``, ``d_lr`` columns).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# One decision multiplies D's learning rate by this (down) or divides by it (up): 12
# decisions in a row take it from 1 to ~0.07, so a D that stays too strong is answered
# within a few epochs, and a single noisy window moves it by only 20%.
BALANCE_FACTOR = 0.8
BALANCE_CEILING = 1.0  # never above the configured d_lr: the controller only gives back


def decay_factor(step: int, total_steps: int, fraction: float, final: float) -> float:
    """The learning-rate multiplier of step ``step`` (0-based) of ``total_steps``: 1 until
    the last ``fraction`` of the steps, then linear down to ``final`` at the last step."""
    if fraction <= 0 or total_steps < 1:
        return 1.0
    start = round(total_steps * (1.0 - fraction))  # the first decayed step
    if step < start:
        return 1.0
    done = min((step - start + 1) / (total_steps - start), 1.0)
    return 1.0 - (1.0 - final) * done


@dataclass
class BalanceController:
    """The seed's advice for an unbalanced pair, applied while training, in the spirit of
    StyleGAN2-ADA's adaptive augmentation: every ``every`` steps, D's mean accuracies on
    real and on fake images (over the steps since the last decision) are compared with the
    loss's healthy band, as the status check compares them. One above it (and neither
    below): D is too strong, its learning rate is multiplied by ``BALANCE_FACTOR``. One below
    it (and neither above): divided by it. Otherwise it stays. The multiplier stays within
    [``floor``, ``BALANCE_CEILING``]. Every change is kept in ``log`` (and the rates
    themselves in the stats)."""

    band: tuple[float, float]
    every: int
    floor: float
    scale: float = 1.0
    real_sum: float = 0.0  # since the last decision
    fake_sum: float = 0.0
    n: int = 0
    log: list[dict] = field(default_factory=list)

    def observe(self, rows: Iterable[Mapping]) -> None:
        for row in rows:
            self.real_sum += row["d_real_acc"]
            self.fake_sum += row["d_fake_acc"]
            self.n += 1

    def due(self, step: int) -> bool:
        return step > 0 and step % self.every == 0

    def decide(self, step: int) -> dict | None:
        """Apply the rule to the steps observed since the last decision; return the change
        (also appended to ``log``), or None when the rate stays."""
        if self.n == 0:
            return None
        real, fake = self.real_sum / self.n, self.fake_sum / self.n
        self.real_sum, self.fake_sum, self.n = 0.0, 0.0, 0
        low, high = self.band
        above, below = max(real, fake) > high, min(real, fake) < low
        if above and not below:
            scale = max(self.floor, self.scale * BALANCE_FACTOR)
        elif below and not above:
            scale = min(BALANCE_CEILING, self.scale / BALANCE_FACTOR)
        else:
            return None
        if scale == self.scale:
            return None
        change = {"step": step, "real_acc": real, "fake_acc": fake, "from": self.scale,
                  "to": scale}
        self.scale = scale
        self.log.append(change)
        return change

    def state_dict(self) -> dict:
        return {"scale": self.scale, "real_sum": self.real_sum, "fake_sum": self.fake_sum,
                "n": self.n, "log": [dict(c) for c in self.log]}

    def load_state_dict(self, state: Mapping) -> None:
        self.scale = float(state["scale"])
        self.real_sum, self.fake_sum = float(state["real_sum"]), float(state["fake_sum"])
        self.n = int(state["n"])
        self.log = [dict(c) for c in state["log"]]
