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

# version 2 added the mosaic layout, grayscale rgb models, extra inputs and unbounded radii
SPEC_VERSION = 2
METADATA_KEY = "rawdenoise.spec"
# bayer4: 2x2 blocks packed to 4 channels; mosaic: the CFA frame as one full-resolution channel;
# rgb: demosaiced RGB/BGR (3 channels) or grayscale (1 channel)
LAYOUTS = ("bayer4", "mosaic", "rgb")
BAYER_ORDERS = ("RGGB", "BGGR", "GRBG", "GBRG")
RGB_ORDERS = ("RGB", "BGR")
GRAY_ORDER = "L"
_DEFAULT_CHANNELS = {"bayer4": 4, "mosaic": 1, "rgb": 3}
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

    def noise(self, iso: float) -> tuple[float, float]:
        """(k, sigma^2) at `iso` in normalised [0, 1] units (the coefficients are in units of `v`)."""
        return _poly(self.k_coeffs, iso) / self.v, _poly(self.sigma_coeffs, iso) / self.v ** 2


INPUT_KINDS = ("noise_level", "gaussian", "constant")
NOISE_FORMS = ("std", "variance", "k_sigma2")


@dataclass(frozen=True)
class ExtraInput:
    """An input the network takes besides the image, and how the SDK fills it for every tile.

    `stride` s > 0: a map of `channels` x H/s x W/s in network-input pixels, cut into tiles along
    with the image (the model's `multiple` must be a multiple of s); `stride` None: one vector of
    `channels` values per image, shape (N, channels). `concat`: the map is not an input of its own
    but follows the image's channels in the image input (a model exported with a single input;
    stride 1); `in_channels` then counts them too.

    kinds:
      noise_level  the frame's noise (from `noise=`, the ISO or a blind estimate), in normalised
                   [0, 1] units times `scale`. form "std": sqrt(k * x + sigma^2) per pixel of the
                   normalised signal x; "variance": k * x + sigma^2; "k_sigma2": the two constants
                   k and sigma^2 (2 channels). "std"/"variance" are per pixel (stride 1), one
                   channel per image channel or 1 for their mean.
      gaussian     N(0, std^2) drawn as a function of `seed` and the absolute position in the frame,
                   so tiled equals untiled and two runs are identical (e.g. an invertible network's latent).
      constant     `value` (a scalar, or one value per channel).
    """

    name: str
    kind: str
    channels: int = 1
    stride: int | None = 1
    form: str = "std"
    scale: float = 1.0
    std: float = 1.0
    seed: int = 0
    value: float | tuple[float, ...] = 0.0
    concat: bool = False

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"an extra input needs a non-empty name, got {self.name!r}")
        if self.kind not in INPUT_KINDS:
            raise InputError(f"input {self.name!r}: kind {self.kind!r} is not one of {', '.join(INPUT_KINDS)}")
        if int(self.channels) < 1:
            raise InputError(f"input {self.name!r}: channels must be >= 1, got {self.channels}")
        if self.stride is not None and int(self.stride) < 1:
            raise InputError(f"input {self.name!r}: stride must be >= 1 (or null for a per-image vector), "
                             f"got {self.stride}")
        if self.kind == "noise_level":
            if self.form not in NOISE_FORMS:
                raise InputError(f"input {self.name!r}: form {self.form!r} is not one of {', '.join(NOISE_FORMS)}")
            if self.form == "k_sigma2" and self.channels != 2:
                raise InputError(f"input {self.name!r}: form k_sigma2 has 2 channels (k, sigma^2), got {self.channels}")
            if self.form != "k_sigma2" and self.stride != 1:
                raise InputError(f"input {self.name!r}: a per-pixel noise map (form {self.form}) needs stride 1, "
                                 f"got {self.stride}; use form k_sigma2 for a map of constants")
        if self.concat and self.stride != 1:
            raise InputError(f"input {self.name!r}: an input concatenated to the image has its resolution "
                             f"(stride 1), got stride {self.stride}")
        if self.kind == "gaussian" and not (self.std >= 0):
            raise InputError(f"input {self.name!r}: std must be >= 0, got {self.std}")
        if isinstance(self.value, (list, tuple)):
            object.__setattr__(self, "value", tuple(float(v) for v in self.value))
            if len(self.value) not in (1, self.channels):
                raise InputError(f"input {self.name!r}: value has {len(self.value)} entries; give one or "
                                 f"{self.channels} (one per channel)")

    def shape(self, n: int, height: int, width: int) -> tuple[int, ...]:
        """Shape of this input for a batch of n images of height x width network-input pixels."""
        if self.stride is None:
            return (n, self.channels)
        return (n, self.channels, height // self.stride, width // self.stride)


@dataclass(frozen=True)
class ModelSpec:
    """What a model expects and returns. Frozen; use `dataclasses.replace` to derive a new one.

    `channel_order`, `in_channels` and `out_channels` default from the layout (bayer4: RGGB, 4;
    mosaic: RGGB, 1; rgb: RGB, 3, or L for a grayscale model with in_channels 1).
    `receptive_radius` None means unbounded (global pooling, attention, data-dependent sampling):
    no overlap makes tiles exact, so tiles are blended with feathered ramps.
    """

    name: str = "model"
    layout: str = "bayer4"
    channel_order: str | None = None
    in_channels: int | None = None
    out_channels: int | None = None
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
    receptive_radius: int | None = 0
    tile: int = 256
    precision: str = "fp32"
    inputs: tuple[ExtraInput, ...] = ()
    samples: int = 1              # Monte-Carlo draws of the random inputs averaged per run
    origin: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    version: int = SPEC_VERSION

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise InputError(f"layout {self.layout!r} is not supported; use one of {', '.join(LAYOUTS)}")
        self._check_inputs()
        self._default_layout_fields()
        if self.layout in ("bayer4", "mosaic") and self.channel_order not in BAYER_ORDERS:
            raise InputError(
                f"channel_order {self.channel_order!r} is not a 2x2 Bayer order; "
                f"use one of {', '.join(BAYER_ORDERS)}"
            )
        data = self.data_channels
        if self.layout == "rgb":
            allowed = (GRAY_ORDER,) if data == 1 else RGB_ORDERS
            if data not in (1, 3):
                raise InputError(f"an rgb model takes 3 image channels (RGB/BGR) or 1 (grayscale), "
                                 f"got {data} (in_channels={self.in_channels})")
            if self.channel_order not in allowed:
                raise InputError(f"channel_order {self.channel_order!r} does not fit an rgb model with "
                                 f"{data} image channel(s); use {' or '.join(allowed)}")
        if self.layout == "bayer4" and data != 4:
            raise InputError(f"a bayer4 model takes 4 packed channels, got {data} (in_channels={self.in_channels}); "
                             f"a network taking the one-channel CFA frame has layout 'mosaic'")
        if self.layout == "mosaic" and data != 1:
            raise InputError(f"a mosaic model takes the CFA frame as 1 channel, got {data} (in_channels="
                             f"{self.in_channels}); a network taking 2x2 blocks packed to 4 channels has layout 'bayer4'")
        if self.noise_source not in NOISE_SOURCES:
            raise InputError(f"noise_source {self.noise_source!r} is not one of {', '.join(NOISE_SOURCES)}")
        if self.output not in OUTPUTS:
            raise InputError(f"output {self.output!r} is not one of {', '.join(OUTPUTS)}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        for name in ("multiple", "in_channels", "out_channels", "data_channels", "samples"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if (self.receptive_radius is not None and self.receptive_radius < 0) or self.tile < 0:
            raise InputError("receptive_radius and tile must be >= 0 (receptive_radius null: unbounded)")
        if self.tile % self.multiple:
            raise InputError(f"tile {self.tile} is not a multiple of {self.multiple}")
        if self.layout == "mosaic" and self.multiple % 2:
            raise InputError(f"a mosaic model's multiple must be even so that tiles keep the 2x2 CFA grid, "
                             f"got {self.multiple}; use {2 * self.multiple}")
        if self.scale == 0:
            raise InputError("scale must be non-zero")
        if self.output == "residual" and self.out_channels > data:
            raise InputError("a residual model cannot return more channels than it takes")
        self._check_noise_maps()

    def _default_layout_fields(self) -> None:
        if self.in_channels is None:
            object.__setattr__(self, "in_channels", _DEFAULT_CHANNELS[self.layout] + self._concat_channels)
        if self.out_channels is None:
            object.__setattr__(self, "out_channels", self.data_channels)
        if self.channel_order is None:
            order = {"rgb": GRAY_ORDER if self.data_channels == 1 else "RGB"}.get(self.layout, "RGGB")
            object.__setattr__(self, "channel_order", order)

    def _check_inputs(self) -> None:
        inputs = tuple(i if isinstance(i, ExtraInput) else _extra_input(i) for i in self.inputs)
        object.__setattr__(self, "inputs", inputs)
        names = [i.name for i in inputs]
        if len(set(names)) != len(names):
            raise InputError(f"extra input names must be unique, got {names}")
        for i in inputs:
            if i.stride is not None and int(self.multiple) % i.stride:
                raise InputError(f"input {i.name!r} has stride {i.stride}, so the model's multiple ({self.multiple}) "
                                 f"must be a multiple of it (tiles are cut on that grid)")

    def _check_noise_maps(self) -> None:
        for i in self.inputs:
            if i.kind == "noise_level" and i.form != "k_sigma2" and i.channels not in (1, self.data_channels):
                raise InputError(f"input {i.name!r}: a per-pixel noise map has 1 channel or one per image channel "
                                 f"({self.data_channels}), got {i.channels}")

    @property
    def _concat_channels(self) -> int:
        return sum(i.channels for i in self.inputs if i.concat)

    @property
    def data_channels(self) -> int:
        """Channels carrying image data (4 for bayer4, 1 for mosaic, 3 or 1 for rgb); `in_channels`
        also counts extra inputs concatenated to the image."""
        return self.in_channels - self._concat_channels

    @property
    def separate_inputs(self) -> tuple[ExtraInput, ...]:
        """The extra inputs that are inputs of the model's own (not concatenated to the image)."""
        return tuple(i for i in self.inputs if not i.concat)

    @property
    def bayer(self) -> bool:
        """True when the model takes a CFA frame (bayer4 or mosaic)."""
        return self.layout in ("bayer4", "mosaic")

    @property
    def unbounded(self) -> bool:
        """True when no overlap makes tiles exact (global context)."""
        return self.receptive_radius is None

    # ---- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["inputs"] = [{k: list(v) if isinstance(v, tuple) else v for k, v in i.items()} for i in d["inputs"]]
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
        if not isinstance(version, int) or isinstance(version, bool) or version > SPEC_VERSION:
            raise ModelFileError(
                f"model manifest version {version!r} is newer than this rawdenoise understands "
                f"({SPEC_VERSION}); upgrade rawdenoise"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelFileError(f"model manifest has unknown fields {unknown}; known: {sorted(known)}")
        kw = dict(d)
        kw["version"] = SPEC_VERSION  # read as this version's object: older manifests are a subset
        try:
            if kw.get("ksigma") is not None:
                kw["ksigma"] = KSigma(**kw["ksigma"])
            kw["inputs"] = tuple(_extra_input(i) for i in kw.get("inputs") or ())
            spec = cls(**kw)
        except (TypeError, InputError) as e:
            raise ModelFileError(f"invalid model manifest: {e}") from None
        # which fields the text gave: a converter measures the others (e.g. a partial spec.json)
        object.__setattr__(spec, "given_fields", frozenset(d))
        return spec

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ModelFileError(f"model manifest is not valid JSON: {e}") from None
        return cls.from_dict(d)

    def replace(self, **changes) -> "ModelSpec":
        return dataclasses.replace(self, **changes)


def _extra_input(d) -> ExtraInput:
    """An ExtraInput from its JSON mapping; unknown keys are refused by name."""
    if isinstance(d, ExtraInput):
        return d
    if not isinstance(d, Mapping):
        raise InputError(f"each entry of 'inputs' must be a mapping, got {type(d).__name__}")
    known = {f.name for f in dataclasses.fields(ExtraInput)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise InputError(f"input {d.get('name', '?')!r} has unknown fields {unknown}; known: {sorted(known)}")
    missing = [k for k in ("name", "kind") if k not in d]
    if missing:
        raise InputError(f"an entry of 'inputs' lacks {', '.join(missing)}: {dict(d)}")
    return ExtraInput(**d)
