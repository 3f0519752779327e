"""ModelSpec: the manifest every model artifact carries.

A file alone must be enough to run its model correctly, so the manifest records how sensor
values become network input (layout, channel order, scaling, optional k-sigma transform), what the
network returns (image or residual), and the geometry that tiling needs (size multiple,
receptive-field radius, preferred tile). Sizes are in network-input pixels: for a `bayer4` model
one packed pixel is a 2x2 block of the sensor.

Where it lives: ONNX `metadata_props["rawdenoise.spec"]`, the `spec` entry of the `.pt` archive,
and a JSON sidecar (`model.engine.json`) next to a TensorRT engine.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import InputError, ModelFileError

SPEC_VERSION = 1
METADATA_KEY = "rawdenoise.spec"
LAYOUTS = ("bayer4", "rgb")
BAYER_ORDERS = ("RGGB", "BGGR", "GRBG", "GBRG")
OUTPUTS = ("image", "residual")
NOISE_SOURCES = ("iso", "frame")
PRECISIONS = ("fp32", "fp16", "int8")


def _poly(coeffs, x: float) -> float:
    """Evaluate a polynomial given highest power first (numpy.poly1d order)."""
    y = 0.0
    for c in coeffs:
        y = y * x + float(c)
    return y


@dataclass(frozen=True)
class KSigma:
    """PMRID-style k-sigma transform: maps a frame at any ISO to the noise level of an anchor ISO.

    With K(iso) the Poisson gain and Sigma(iso) the read-noise variance, both in units of `v`
    (the white level the coefficients were fitted for), the forward transform of a [0, 1] frame is
    ``(x * v * k_a / k + (sigma / k**2 - sigma_a / k_a**2) * k_a) / v``.
    """

    k_coeffs: tuple[float, ...]
    sigma_coeffs: tuple[float, ...]
    anchor_iso: float
    v: float

    def __post_init__(self):
        object.__setattr__(self, "k_coeffs", tuple(float(c) for c in self.k_coeffs))
        object.__setattr__(self, "sigma_coeffs", tuple(float(c) for c in self.sigma_coeffs))
        if not self.k_coeffs or not self.sigma_coeffs:
            raise InputError("KSigma needs at least one coefficient for K(iso) and Sigma(iso)")
        if self.v <= 0:
            raise InputError(f"KSigma.v must be positive, got {self.v}")

    def gain_offset(self, *, iso: float | None = None, k: float | None = None,
                    sigma: float | None = None) -> tuple[float, float]:
        """(gain, offset) of the forward transform x -> x * gain + offset on [0, 1] data.

        Either `iso` (evaluated with the coefficients) or the frame's own `k` and `sigma`
        (read-noise variance, in units of `v`) must be given.
        """
        if iso is not None:
            if iso <= 0:
                raise InputError(f"iso must be positive, got {iso}")
            k, sigma = _poly(self.k_coeffs, iso), _poly(self.sigma_coeffs, iso)
        elif k is None or sigma is None:
            raise InputError(
                "this model applies a k-sigma noise transform and needs the frame's ISO; "
                "pass iso=... (or the estimated noise parameters k and sigma)"
            )
        if k <= 0:
            raise InputError(f"noise gain k must be positive, got {k} (iso={iso})")
        k_a = _poly(self.k_coeffs, self.anchor_iso)
        s_a = _poly(self.sigma_coeffs, self.anchor_iso)
        gain = k_a / k
        offset = (sigma / k**2 - s_a / k_a**2) * k_a / self.v
        return gain, offset


@dataclass(frozen=True)
class ModelSpec:
    """What a model expects and returns. Frozen; use `dataclasses.replace` to derive a new one."""

    name: str = "model"
    layout: str = "bayer4"
    channel_order: str = "RGGB"
    in_channels: int = 4
    out_channels: int = 4
    scale: float = 1.0
    offset: float = 0.0
    clip_input: bool = False
    ksigma: KSigma | None = None
    # where a k-sigma model gets the frame's noise level when no `noise=` is given:
    # "iso": the ISO (argument or file metadata) with the manifest's coefficients, fitted for one
    # camera; "frame": estimated from the frame itself (models meant for any camera), an ISO
    # counts only when the caller passes it explicitly
    noise_source: str = "iso"
    output: str = "image"
    multiple: int = 16
    receptive_radius: int = 0
    tile: int = 256
    precision: str = "fp32"
    origin: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    version: int = SPEC_VERSION

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise InputError(f"layout {self.layout!r} is not supported; use one of {', '.join(LAYOUTS)}")
        if self.layout == "bayer4" and self.channel_order not in BAYER_ORDERS:
            raise InputError(
                f"channel_order {self.channel_order!r} is not a 2x2 Bayer order; "
                f"use one of {', '.join(BAYER_ORDERS)}"
            )
        if self.layout == "rgb" and self.channel_order not in ("RGB", "BGR"):
            raise InputError(f"channel_order {self.channel_order!r} is not an RGB order; use RGB or BGR")
        if self.noise_source not in NOISE_SOURCES:
            raise InputError(f"noise_source {self.noise_source!r} is not one of {', '.join(NOISE_SOURCES)}")
        if self.output not in OUTPUTS:
            raise InputError(f"output {self.output!r} is not one of {', '.join(OUTPUTS)}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        for name in ("multiple", "in_channels", "out_channels"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.receptive_radius < 0 or self.tile < 0:
            raise InputError("receptive_radius and tile must be >= 0")
        if self.tile % self.multiple:
            raise InputError(f"tile {self.tile} is not a multiple of {self.multiple}")
        if self.scale == 0:
            raise InputError("scale must be non-zero")
        if self.output == "residual" and self.out_channels > self.in_channels:
            raise InputError("a residual model cannot return more channels than it takes")

    @property
    def data_channels(self) -> int:
        """Channels carrying image data (4 for bayer4, 3 for rgb); the rest are conditioning."""
        return 4 if self.layout == "bayer4" else 3

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.ksigma is not None:
            d["ksigma"] = {k: list(v) if isinstance(v, tuple) else v
                           for k, v in dataclasses.asdict(self.ksigma).items()}
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelSpec":
        if not isinstance(d, Mapping):
            raise ModelFileError(f"model manifest must be a mapping, got {type(d).__name__}")
        version = d.get("version", SPEC_VERSION)
        if not isinstance(version, int) or version > SPEC_VERSION:
            raise ModelFileError(
                f"model manifest version {version!r} is newer than this rawdenoise understands "
                f"({SPEC_VERSION}); upgrade rawdenoise"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelFileError(f"model manifest has unknown fields {unknown}; known: {sorted(known)}")
        kw = dict(d)
        if kw.get("ksigma") is not None:
            kw["ksigma"] = KSigma(**kw["ksigma"])
        try:
            return cls(**kw)
        except (TypeError, InputError) as e:
            raise ModelFileError(f"invalid model manifest: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ModelFileError(f"model manifest is not valid JSON: {e}") from None
        return cls.from_dict(d)

    def replace(self, **changes) -> "ModelSpec":
        return dataclasses.replace(self, **changes)
