"""How a raw image becomes a model's input: the ``Preprocess`` value a model file stores (size,
scaling, mean/std, resize), which calling it applies: ``model(model.se_nas.preprocess(images))``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError

MAX_IMAGE_SIZE = 4096  # the largest input side a model file may ask for


@dataclass(frozen=True)
class Preprocess:
    """How a raw image becomes this model's input (what the training data went through, without
    augmentation). Calling it does exactly that: ``model(model.se_nas.preprocess(images))``.

    image_size: side of the square input.   pixel_max: the raw value that maps to 1.0 (255 for 8-bit
    images, 16 for scikit-learn's digits).  mean, std: per-channel normalisation after that scaling.
    channels: of the raw image (1: grayscale, repeated to the 3 channels the model takes).
    resize_to: None resizes the whole image to ``image_size`` (bilinear); N resizes its shorter side
    to N (bilinear, antialiased) and takes the centre ``image_size`` square, as ImageNet evaluation does.
    """

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixel_max: float = 255.0
    channels: int = 3
    resize_to: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        for name, lo, hi in (("image_size", 1, MAX_IMAGE_SIZE), ("resize_to", self.image_size, MAX_IMAGE_SIZE)):
            v = getattr(self, name)
            if v is None and name == "resize_to":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"preprocess {name} must be an integer in [{lo}, {hi}], got {name}={v!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"preprocess channels must be 1 or 3, got channels={self.channels!r}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if len(v) != self.channels or not all(math.isfinite(x) for x in v):
                raise ValueError(f"preprocess {name} must be {self.channels} finite number(s), got {name}={v!r}")
        if min(self.std) <= 0 or not (math.isfinite(self.pixel_max) and self.pixel_max > 0):
            raise ValueError(f"preprocess std and pixel_max must be positive, got std={self.std}, "
                             f"pixel_max={self.pixel_max!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        names = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or set(d) - names:
            raise ValueError(f"preprocess must be an object with keys {', '.join(sorted(names))}, got {d!r:.200}")
        return cls(**d)

    def describe(self) -> str:
        kind = "grayscale" if self.channels == 1 else "RGB"
        resize = (f"resized to {self.image_size}x{self.image_size}" if self.resize_to is None else
                  f"shorter side resized to {self.resize_to}, centre {self.image_size}x{self.image_size} crop")
        stats = ", ".join(f"{m:.4g}/{s:.4g}" for m, s in zip(self.mean, self.std))
        return (f"{kind} images, values 0..{self.pixel_max:g}, divided by {self.pixel_max:g}, "
                f"normalised (mean/std {stats}), {resize}")

    def __call__(self, images) -> torch.Tensor:
        """Model input (N, 3, S, S) float32 from raw images: an array or tensor (N, C, H, W),
        (C, H, W), or for grayscale also (N, H, W) and (H, W), with values in 0..pixel_max."""
        x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images))  # a writable copy
        c = self.channels
        if c == 1 and x.ndim in (2, 3):
            x = x.reshape(-1, 1, *x.shape[-2:])
        elif x.ndim == 3 and x.shape[0] == c:
            x = x[None]
        if x.ndim != 4 or x.shape[1] != c:
            allowed = f"(N, {c}, H, W) or ({c}, H, W)" + (", (N, H, W) or (H, W)" if c == 1 else "")
            raise UsageError(f"images must be {allowed} (channels first), got shape {tuple(x.shape)}")
        x = x.float() / self.pixel_max
        x = (x - torch.tensor(self.mean).view(1, c, 1, 1)) / torch.tensor(self.std).view(1, c, 1, 1)
        s = self.image_size
        if self.resize_to is None:
            if x.shape[-2:] != (s, s):
                x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        else:  # torchvision's Resize(resize_to) then CenterCrop(s)
            h, w = x.shape[-2:]
            short, long = (h, w) if h <= w else (w, h)
            new = (self.resize_to, int(self.resize_to * long / short))
            x = F.interpolate(x, size=new if h <= w else new[::-1], mode="bilinear", align_corners=False,
                              antialias=True)
            top, left = (int(round((n - s) / 2.0)) for n in x.shape[-2:])
            x = x[..., top:top + s, left:left + s]
        return x.expand(-1, 3, -1, -1).contiguous() if c == 1 else x.contiguous()
