"""The search space: which config keys vary, and how. Plain data until ``to_tune``.

A space file is YAML mapping config keys to a distribution or a constant:

    g_lr: {loguniform: [1.0e-5, 1.0e-3]}
    dropout: {uniform: [0.0, 0.5]}
    batch_size: {choice: [32, 64]}
    precision: bf16            # a constant for every trial

Every key must be a config key, and every value a distribution may draw must pass the
config's own validation: both are checked before any trial starts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from dcgan.config import TrainConfig
from dcgan.errors import ConfigError, DCGANError, first_line

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice")
# The default space (docs/tuning.md): the knobs that decide which network wins.
DEFAULT_SPACE: dict[str, Any] = {
    "g_lr": {"loguniform": [1e-5, 1e-3]},
    "d_lr": {"loguniform": [1e-5, 1e-3]},
    "dropout": {"uniform": [0.0, 0.5]},
    "label_smoothing": {"uniform": [0.0, 0.3]},
    "label_smoothing_mode": {"choice": ["two-sided", "one-sided"]},
}
# Keys a search must not vary: they name places or resources, not hyperparameters.
UNTUNABLE = ("data_dir", "device", "max_failures")


class SpaceError(DCGANError):
    """The search space is empty or invalid (usage error, status 2)."""

    exit_code = 2


def load_space(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return dict(DEFAULT_SPACE)
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise SpaceError(f"--space {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise SpaceError(f"--space {path} is not valid YAML: {first_line(exc)}") from None
    if raw is None or raw == {}:
        raise SpaceError(f"--space {path} is empty: give at least one key to search")
    if not isinstance(raw, dict):
        raise SpaceError(f"--space {path} must map config keys to distributions")
    return raw


def _check_value(key: str, value: Any, base: TrainConfig) -> None:
    try:
        base.replace(**{key: value})
    except ConfigError as exc:
        raise SpaceError(f"search space: {key}: the value {value!r} breaks the config rule "
                         f"({exc.rule})") from None
    except (TypeError, ValueError) as exc:
        raise SpaceError(f"search space: {key}: {value!r} is not valid ({exc})") from None


def _number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def validate_space(space: dict[str, Any], base: TrainConfig) -> dict[str, Any]:
    """The space with every value checked against the config's rules; raises SpaceError."""
    if not space:
        raise SpaceError("the search space is empty: give at least one key to search")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    varies = False
    for key, spec in space.items():
        if key not in known:
            raise SpaceError(f"search space: {key!r} is not a config key (known: "
                             f"{', '.join(sorted(known))})")
        if key in UNTUNABLE:
            raise SpaceError(f"search space: {key} cannot be searched; set it with --set")
        if not isinstance(spec, dict):
            _check_value(key, spec, base)
            continue
        if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise SpaceError(f"search space: {key}: give one of {', '.join(DISTRIBUTIONS)} "
                             f"(got {spec!r})")
        (kind, args), = spec.items()
        varies = True
        if kind == "choice":
            if not isinstance(args, list) or not args:
                raise SpaceError(f"search space: {key}: choice needs a non-empty list")
            for value in args:
                _check_value(key, value, base)
            continue
        if isinstance(args, list):  # YAML reads 1e-5 (no dot) as a string
            args = spec[kind] = [_number(a) for a in args]
        if not (isinstance(args, list) and len(args) == 2
                and all(isinstance(a, int | float) and not isinstance(a, bool) for a in args)):
            raise SpaceError(f"search space: {key}: {kind} needs [low, high] numbers "
                             f"(got {args!r})")
        low, high = args
        if not low < high:
            raise SpaceError(f"search space: {key}: low {low} must be below high {high}")
        if kind == "loguniform" and low <= 0:
            raise SpaceError(f"search space: {key}: loguniform needs low > 0 (got {low})")
        if kind == "randint":
            low, high = int(low), int(high) - 1  # high is exclusive
        _check_value(key, low, base)
        _check_value(key, high, base)
    if not varies:
        raise SpaceError("the search space has only constants: nothing to search")
    return space


def to_tune(space: dict[str, Any]) -> dict[str, Any]:
    """Ray Tune's param_space for a validated space."""
    from ray import tune

    makers = {"loguniform": tune.loguniform, "uniform": tune.uniform,
              "randint": tune.randint, "choice": lambda values: tune.choice(values)}
    out = {}
    for key, spec in space.items():
        if isinstance(spec, dict):
            (kind, args), = spec.items()
            out[key] = makers[kind](args) if kind == "choice" else makers[kind](*args)
        else:
            out[key] = spec
    return out


def mutations(space: dict[str, Any]) -> dict[str, Any]:
    """PBT's hyperparameter_mutations: the distributions of the space (constants stay)."""
    return {k: v for k, v in to_tune(space).items() if isinstance(space[k], dict)}
