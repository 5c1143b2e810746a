"""Device and precision resolution, with config errors for impossible combinations."""

from __future__ import annotations

import torch

from dcgan.config import TrainConfig
from dcgan.errors import ConfigError


def resolve_device(cfg: TrainConfig) -> torch.device:
    name = cfg.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device", f"{cfg.device} requested but no CUDA GPU is available "
                                        "(use device=cpu or auto)")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise ConfigError("device", f"{cfg.device} requested but only "
                                        f"{torch.cuda.device_count()} GPU(s) are visible")
        device = torch.device("cuda", index)
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision", "fp16 needs a CUDA GPU (use bf16 or fp32 on the CPU)")
    if cfg.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("precision", f"bf16 is not supported on {torch.cuda.get_device_name()}")
    return device
