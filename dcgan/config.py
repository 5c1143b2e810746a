"""Typed training configuration: the seed's defaults, YAML files, ``key=value`` overrides.

Every key is validated here, once, so that the trainer can trust its config. Errors name the
key and the rule (``ConfigError``), and the CLI turns them into exit status 2.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import stat
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from dcgan.augment import TRANSFORMS
from dcgan.errors import ConfigError, quote, shown
from dcgan.features import MIN_SAMPLES
from dcgan.losses import LOSSES, build_loss, loss_defaults

DATA_DIR_ENV = "DCGAN_DATA_DIR"
PRECISIONS = ("fp32", "bf16", "fp16")
SMOOTHING_MODES = ("two-sided", "one-sided")
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
MAX_EVAL_SAMPLES = 100_000  # 313 MB of images per evaluation
MAX_LATENT_DIM = 4096
MAX_CRITIC_STEPS = 100
MAX_G_WIDTH = 8  # 8x the seed's channels: 19 M parameters in G (1: 0.9 M); wider is a typo
# Every count and seed fits the C integers and RNG seeds it feeds (torch, Ray, NumPy): a
# larger one would overflow deep inside a run instead of being refused here.
MAX_INT = 2**31 - 1
MAX_BATCH_SIZE = 65536
MAX_RESCORE_TOP = 100  # each candidate keeps a generator's weights in memory
# The one rule for an EMA decay (the ema_decay key and dcgan.ema): 0 copies G, and 1 would
# freeze the average at G's initial weights, which no run wants.
DECAY_RULE = "must be in [0, 1) (0 turns it off)"


def valid_decay(decay: float) -> bool:
    return 0 <= decay < 1


_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class Tristate(str):
    """The type of the auto / true / false keys: YAML's booleans (``channels_last: false``)
    and the strings (``--set channels_last=false``) both give "true" or "false"."""

    CHOICES = ("auto", "true", "false")  # also what the wings' --use-gpu takes


class Names(str):
    """The type of a list-of-names key: comma-separated (``--set augment=translation,cutout``)
    or a YAML list, kept as the comma-separated string ("" for none)."""


def _default_data_dir() -> str:
    # The environment replaces the default only; an explicit config value still wins.
    return os.environ.get(DATA_DIR_ENV) or "./data"


@dataclass
class TrainConfig:
    # Optimisation (the seed: DCGAN paper values).
    epochs: int = 30  # full passes over the training set
    batch_size: int = 64  # images per step; global: N workers take batch_size / N each
    g_lr: float = 2e-4  # generator Adam learning rate
    d_lr: float = 2e-4  # discriminator Adam learning rate
    beta1: float = 0.5  # Adam beta1; 0.5 is steadier than 0.9 for GANs
    beta2: float = 0.999  # Adam beta2
    # Model and loss (dcgan.losses).
    loss: str = "bce"  # bce (the seed's), hinge, or wgan-gp (its own Adam defaults)
    gp_weight: float = 10.0  # wgan-gp: weight of the gradient penalty (lambda)
    critic_steps: int = 1  # D updates per G update (wgan-gp default 5)
    latent_dim: int = 100  # size of the noise vector z (at most 4096)
    label_smoothing: float = 0.1  # bce: real target 1-s, fake target s (two-sided) or 0
    label_smoothing_mode: str = "two-sided"  # bce: two-sided (the seed) or one-sided
    dropout: float = 0.3  # dropout after each discriminator block
    g_width: int = 1  # generator width: multiplies its hidden channels (1 = the seed's)
    spectral_norm: bool = False  # spectral normalisation of D's layers, in place of its norms
    # Side effects, counted in steps (batches) or epochs.
    sample_every: int = 100  # sample grid every N batches of an epoch (0 = off)
    checkpoint_every: int = 10  # weights + full state every N epochs (0 = off)
    checkpoint_every_steps: int = 0  # full state every N steps (0 = off)
    log_every: int = 100  # the seed's log line every N batches
    # Run.
    seed: int = 42  # seeds weights, noise, dropout and the data order
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:N
    data_dir: str = field(default_factory=_default_data_dir)  # holds MNIST/raw
    train_subset: int = 0  # use the first N training images (0 = all 60,000)
    max_steps: int = 0  # stop after N steps in all (0 = no cap)
    precision: str = "fp32"  # fp32, bf16 (autocast), fp16 (autocast + grad scaler, GPU only)
    channels_last: Tristate = "auto"  # NHWC activations: auto (= true), true, false
    compile: str = "off"  # torch.compile the step: off, default, reduce-overhead, max-autotune
    # Sample quality (FID/IS with the fixed MNIST classifier, docs/evaluation.md).
    ema_decay: float = 0.999  # moving average of G's weights, scored beside G (0 = off)
    eval_every: int = 1  # evaluate every N epochs and at the end (0 = off)
    eval_samples: int = 2000  # generated images per evaluation (129-100,000; FID needs > 128)
    rescore_top: int = 3  # at the end, rescore the N best-evaluated generators (0/1 = off)
    rescore_samples: int = 10000  # ... each with this many images, and keep the best
    # Learning-rate schedules (dcgan.schedule), off by default: the seed's rates are constant.
    lr_decay: float = 0.0  # decay both rates linearly over this last fraction of the steps
    lr_decay_final: float = 0.1  # ... down to this fraction of their value at the last step
    auto_balance: bool = False  # lower D's rate while D's accuracy is above its band
    balance_every: int = 200  # steps between two balance decisions
    balance_floor: float = 0.1  # D's rate never falls below this fraction of d_lr
    # Differentiable augmentation of every image D sees (dcgan.augment), off by default.
    augment: Names = ""  # transforms, comma-separated: translation, cutout ("" = off)
    augment_p: float = 0.0  # probability of each transform per image (adaptive: its start)
    augment_target: float = 0.0  # adaptive p (ADA): the target of r = E[sign D(x)] (0 = fixed)
    augment_every: int = 4  # adaptive: steps between two adjustments of p
    augment_speed: int = 100_000  # adaptive: images for p to cross 0-1 at the fastest
    augment_shift: float = 0.125  # translation: up to this fraction of the image, each way
    augment_cutout: float = 0.25  # cutout: a square of this fraction of the image's side
    # Distributed mode (dcgan train-distributed); ignored by local runs.
    sync_batchnorm: Tristate = "auto"  # auto (on for GPU workers), true, false
    max_failures: int = 3  # worker-group restarts from the latest checkpoint before giving up

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def one_sided_smoothing(self) -> bool:
        return self.label_smoothing_mode == "one-sided"

    def replace(self, **changes: Any) -> TrainConfig:
        return from_dict({**self.to_dict(), **changes})


_FIELDS = {f.name: f for f in fields(TrainConfig)}
_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "Tristate": Tristate,
                           "bool": bool, "Names": Names}
MAX_AUGMENT_SPEED = 10**9


def _require(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(key, f"{rule} (got {shown(value)})")


def _check_type(key: str, want: type, value: Any) -> None:
    if want is float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        _require(number and math.isfinite(value), key, "must be a finite number", value)
    elif want is bool:
        _require(isinstance(value, bool), key, "must be true or false", value)
    elif want is int:
        _require(isinstance(value, int) and not isinstance(value, bool), key, "must be an integer",
                 value)
    else:  # str and Tristate values are plain strings
        _require(isinstance(value, str), key, "must be a string", value)


def validate(cfg: TrainConfig) -> None:
    """Check every value against its rule; raise ConfigError naming the first bad key."""
    for name, f in _FIELDS.items():
        _check_type(name, _TYPES[f.type], getattr(cfg, name))
        if _TYPES[f.type] is int:
            _require(getattr(cfg, name) <= MAX_INT, name, f"must be <= {MAX_INT}",
                     getattr(cfg, name))
    _require(cfg.batch_size <= MAX_BATCH_SIZE, "batch_size", f"must be <= {MAX_BATCH_SIZE}",
             cfg.batch_size)
    _require(cfg.rescore_top <= MAX_RESCORE_TOP, "rescore_top", f"must be <= {MAX_RESCORE_TOP}",
             cfg.rescore_top)
    for key in ("g_lr", "d_lr"):
        _require(getattr(cfg, key) > 0, key, "must be > 0", getattr(cfg, key))
    for key in ("beta1", "beta2"):
        _require(0 <= getattr(cfg, key) < 1, key, "must be in [0, 1)", getattr(cfg, key))
    for key in ("epochs", "batch_size", "latent_dim", "log_every"):
        _require(getattr(cfg, key) >= 1, key, "must be >= 1", getattr(cfg, key))
    for key in ("sample_every", "checkpoint_every", "checkpoint_every_steps", "train_subset",
                "max_steps", "seed", "eval_every", "max_failures", "rescore_top"):
        _require(getattr(cfg, key) >= 0, key, "must be >= 0", getattr(cfg, key))
    # FID's feature covariance needs more samples than dimensions (dcgan.features); the
    # upper bounds keep a typo's extra zeros from filling the machine's memory.
    _require(cfg.eval_samples >= MIN_SAMPLES, "eval_samples", f"must be >= {MIN_SAMPLES}",
             cfg.eval_samples)
    _require(cfg.eval_samples <= MAX_EVAL_SAMPLES, "eval_samples",
             f"must be <= {MAX_EVAL_SAMPLES}", cfg.eval_samples)
    _require(MIN_SAMPLES <= cfg.rescore_samples <= MAX_EVAL_SAMPLES, "rescore_samples",
             f"must be in {MIN_SAMPLES}-{MAX_EVAL_SAMPLES}", cfg.rescore_samples)
    _require(0 <= cfg.lr_decay <= 1, "lr_decay", "must be in [0, 1]", cfg.lr_decay)
    _require(0 <= cfg.lr_decay_final <= 1, "lr_decay_final", "must be in [0, 1]",
             cfg.lr_decay_final)
    _require(cfg.balance_every >= 1, "balance_every", "must be >= 1", cfg.balance_every)
    _require(0 < cfg.balance_floor <= 1, "balance_floor", "must be in (0, 1]",
             cfg.balance_floor)
    _require(cfg.latent_dim <= MAX_LATENT_DIM, "latent_dim",
             f"must be <= {MAX_LATENT_DIM}", cfg.latent_dim)
    _require(0 <= cfg.label_smoothing < 0.5, "label_smoothing", "must be in [0, 0.5)",
             cfg.label_smoothing)
    _require(0 <= cfg.dropout < 1, "dropout", "must be in [0, 1)", cfg.dropout)
    _require(1 <= cfg.g_width <= MAX_G_WIDTH, "g_width", f"must be in 1-{MAX_G_WIDTH}",
             cfg.g_width)
    _require(cfg.label_smoothing_mode in SMOOTHING_MODES, "label_smoothing_mode",
             f"must be one of {', '.join(SMOOTHING_MODES)}", cfg.label_smoothing_mode)
    _require(valid_decay(cfg.ema_decay), "ema_decay", DECAY_RULE, cfg.ema_decay)
    _require(cfg.loss in LOSSES, "loss", f"must be one of {', '.join(LOSSES)}", cfg.loss)
    _require(cfg.gp_weight >= 0, "gp_weight", "must be >= 0", cfg.gp_weight)
    _require(1 <= cfg.critic_steps <= MAX_CRITIC_STEPS, "critic_steps",
             f"must be in 1-{MAX_CRITIC_STEPS}", cfg.critic_steps)
    _require(bool(_DEVICE_RE.match(cfg.device)), "device",
             "must be one of auto, cpu, cuda, cuda:N", cfg.device)
    _require(cfg.precision in PRECISIONS, "precision", "must be one of fp32, bf16, fp16",
             cfg.precision)
    for key in ("sync_batchnorm", "channels_last"):
        _require(getattr(cfg, key) in Tristate.CHOICES, key,
                 f"must be one of {', '.join(Tristate.CHOICES)}", getattr(cfg, key))
    _require(cfg.compile in COMPILE_MODES, "compile",
             f"must be one of {', '.join(COMPILE_MODES)}", cfg.compile)
    _require(bool(cfg.data_dir.strip()), "data_dir", "must not be empty", cfg.data_dir)
    if cfg.auto_balance:
        _require(build_loss(cfg).profile.acc_band is not None, "auto_balance",
                 f"needs a loss with a healthy accuracy band; {cfg.loss}'s critic has none",
                 cfg.auto_balance)
    names = cfg.augment.split(",") if cfg.augment else []
    for name in names:
        _require(name in TRANSFORMS, "augment",
                 f"must name transforms among {', '.join(TRANSFORMS)}", cfg.augment)
    _require(len(set(names)) == len(names), "augment", "names a transform twice", cfg.augment)
    _require(0 <= cfg.augment_p <= 1, "augment_p", "must be in [0, 1]", cfg.augment_p)
    _require(0 <= cfg.augment_target < 1, "augment_target", "must be in [0, 1) (0: a fixed p)",
             cfg.augment_target)
    for key in ("augment_p", "augment_target"):
        _require(bool(names) or not getattr(cfg, key), key,
                 "needs transforms to apply (augment=translation,cutout)", getattr(cfg, key))
    _require(cfg.augment_every >= 1, "augment_every", "must be >= 1", cfg.augment_every)
    _require(1 <= cfg.augment_speed <= MAX_AUGMENT_SPEED, "augment_speed",
             f"must be in 1-{MAX_AUGMENT_SPEED}", cfg.augment_speed)
    _require(0 < cfg.augment_shift <= 0.5, "augment_shift", "must be in (0, 0.5]",
             cfg.augment_shift)
    _require(0 < cfg.augment_cutout <= 1, "augment_cutout", "must be in (0, 1]",
             cfg.augment_cutout)
    # A compiled step guards on the rates' and p's values: a rate or a p that changes would
    # recompile it.
    changing = [k for k in ("lr_decay", "auto_balance", "augment_target") if getattr(cfg, k)]
    _require(cfg.compile == "off" or not changing, "compile",
             f"must be off with {' or '.join(changing)} (a compiled step would recompile "
             "at every change of learning rate or augmentation probability)", cfg.compile)


def _coerce(key: str, raw: Any) -> Any:
    """Turn a YAML or command-line value into the key's type, refusing lossy conversions."""
    want = _TYPES[_FIELDS[key].type]
    if want is Tristate:
        if isinstance(raw, bool):
            return "true" if raw else "false"
        if isinstance(raw, str) and raw.strip().lower() in Tristate.CHOICES:
            return raw.strip().lower()
        raise ConfigError(key, f"must be one of {', '.join(Tristate.CHOICES)} "
                               f"(got {shown(raw)})")
    if want is Names:
        items = raw if isinstance(raw, list) else raw.split(",") if isinstance(raw, str) \
            else None
        if items is None or not all(isinstance(i, str) for i in items):
            raise ConfigError(key, f"must be names, comma-separated or a list (got {shown(raw)})")
        return ",".join(i.strip().lower() for i in items if i.strip())
    if want is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
            return raw.strip().lower() == "true"
        raise ConfigError(key, f"must be true or false (got {shown(raw)})")
    kind = {int: "an integer", float: "a finite number", str: "a string"}[want]
    if isinstance(raw, bool) or raw is None or isinstance(raw, (list, dict)):
        raise ConfigError(key, f"must be {kind} (got {shown(raw)})")
    try:
        if want is int:
            if isinstance(raw, float):
                if not raw.is_integer():
                    raise ValueError
                return int(raw)
            return int(str(raw).strip())
        if want is float:
            return float(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(key, f"must be {kind} (got {shown(raw)})") from None


def from_dict(values: dict[str, Any]) -> TrainConfig:
    """Defaults < the chosen loss's own defaults (``dcgan.losses``) < ``values``."""
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ConfigError(unknown[0], f"unknown key (known keys: {', '.join(_FIELDS)})")
    loss = values.get("loss", TrainConfig.loss)
    values = {**loss_defaults(str(loss).strip()), **values}
    return TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["g_lr=1e-4", "epochs=5"]`` -> ``{"g_lr": "1e-4", "epochs": "5"}`` (typed later)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(pair, "an override must look like key=value")
        if key not in _FIELDS:
            raise ConfigError(key, f"unknown key (known keys: {', '.join(_FIELDS)})")
        out[key] = value.strip()
    return out


MAX_CONFIG_BYTES = 1 << 20  # a config is a few hundred bytes; this reads no endless device
MAX_CONFIG_DEPTH = 8  # a config is flat (a list for augment): deeper is not one of ours


class _BoundedLoader(yaml.SafeLoader):
    """YAML as a config needs it: no aliases (a few lines of anchors expand to gigabytes)
    and no deep nesting (a recursion error in the parser)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise ConfigError("--config", f"{self.name} uses a YAML alias at line "
                                          f"{mark.line + 1}; write the value out")
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_CONFIG_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError("--config", f"{self.name} nests deeper than "
                                              f"{MAX_CONFIG_DEPTH} levels at line "
                                              f"{mark.line + 1}; a config is flat key: value")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def read_config_text(path: str | Path, flag: str = "--config") -> str:
    """A config file's text, checked before it is parsed: a regular file (not a folder, a
    pipe or a device), at most ``MAX_CONFIG_BYTES``, UTF-8 text."""
    path = Path(path)
    try:
        # Before opening: opening a pipe would wait for a writer, a device may never end.
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError(flag, f"{quote(str(path))} is a directory, not a file")
        if not stat.S_ISREG(mode):
            raise ConfigError(flag, f"{quote(str(path))} is not a regular file")
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(flag, f"cannot read {quote(str(path))}: "
                                f"{exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(flag, f"{quote(str(path))} is larger than "
                                f"{MAX_CONFIG_BYTES // 1024} KiB: not a config file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(flag, f"{quote(str(path))} is not UTF-8 text (byte {exc.start})"
                          ) from None
    if "\x00" in text:
        raise ConfigError(flag, f"{quote(str(path))} is not text (it holds NUL bytes)")
    return text


def read_yaml(path: str | Path) -> dict[str, Any]:
    text = read_config_text(path)
    loader = _BoundedLoader(text)
    loader.name = quote(str(path))
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise ConfigError("--config", f"{quote(str(path))} is not valid YAML{line}") from None
    except ValueError:  # a number YAML cannot build (thousands of digits)
        raise ConfigError("--config", f"{quote(str(path))} holds a value YAML cannot read "
                                      "(a number of thousands of digits?)") from None
    finally:
        loader.dispose()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("--config", f"{quote(str(path))} must hold a mapping of key: value")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults < ``base`` (a saved run config) < YAML file < ``--set`` overrides."""
    values: dict[str, Any] = dict(base or {})
    if path is not None:
        values.update(read_yaml(path))
    values.update(parse_overrides(overrides or []))
    return from_dict(values)


def ignored_settings(cfg: TrainConfig) -> str | None:
    """A note naming the keys set away from their defaults that ``cfg``'s loss does not read
    (None when there are none)."""
    cls = LOSSES[cfg.loss]
    keys = [k for k in cls.ignored_keys if getattr(cfg, k) != getattr(TrainConfig, k)]
    if not keys:
        return None
    values = ", ".join(f"{k}={getattr(cfg, k)}" for k in keys)
    return (f"note: loss {cfg.loss} does not use {values} ({cls.ignored_why}); "
            "the value is kept in the config but changes nothing")


def note_ignored_settings(cfg: TrainConfig) -> None:
    """Print ``ignored_settings``'s note, if any, on stderr (once per command)."""
    import sys

    note = ignored_settings(cfg)
    if note:
        print(note, file=sys.stderr, flush=True)


def config_yaml(cfg: TrainConfig) -> str:
    """Every key, in the dataclass's order, as YAML that ``--config`` reads back to ``cfg``."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    from dcgan.io import atomic_write_text

    atomic_write_text(path, config_yaml(cfg))
