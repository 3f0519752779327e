"""NoiseProfile: a sensor's Poisson-Gaussian noise against ISO, usable at any ISO.

k(ISO) is linear and sigma^2(ISO) quadratic (both in DN, for data with the profile's black and
white levels); `normalised(iso)` gives them for frames scaled to black 0, white 1.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from rawdenoise.errors import InputError
from rawdenoise.fileio import atomic_output
from rawdenoise.spec import KSigma


def _poly(coeffs, x):
    return np.polyval(np.asarray(coeffs, np.float64), np.asarray(x, np.float64))


@dataclass(frozen=True)
class NoiseProfile:
    """k_coeffs (linear) and sigma2_coeffs (quadratic) are highest power first, in DN and DN^2."""

    k_coeffs: tuple[float, ...]
    sigma2_coeffs: tuple[float, ...]
    black_level: tuple[float, ...]
    white_level: float
    iso_range: tuple[float, float] = (100.0, 6400.0)
    name: str = "profile"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        for f in ("k_coeffs", "sigma2_coeffs", "black_level", "iso_range"):
            object.__setattr__(self, f, tuple(float(v) for v in np.ravel(getattr(self, f))))
        if not self.k_coeffs or not self.sigma2_coeffs:
            raise InputError("a noise profile needs coefficients for both k(ISO) and sigma^2(ISO)")
        if len(self.black_level) not in (1, 4):
            raise InputError(f"black_level must have 1 or 4 values, got {len(self.black_level)}")
        if not self.white_level > max(self.black_level):
            raise InputError(f"white_level {self.white_level} must exceed black_level {list(self.black_level)}")

    @property
    def range(self) -> float:
        """white - mean black: the DN span that normalisation maps to [0, 1]."""
        return float(self.white_level - np.mean(self.black_level))

    def k(self, iso) -> np.ndarray | float:
        return _poly(self.k_coeffs, iso)[()]

    def sigma2(self, iso) -> np.ndarray | float:
        return _poly(self.sigma2_coeffs, iso)[()]

    def normalised(self, iso: float) -> tuple[float, float]:
        """(k, sigma2) for frames normalised to black 0, white 1."""
        k, s2 = float(self.k(iso)), float(self.sigma2(iso))
        if k <= 0 or s2 < 0:
            raise InputError(f"profile {self.name!r} gives k={k}, sigma2={s2} at ISO {iso}; outside its valid range?")
        return k / self.range, s2 / self.range ** 2

    def frame_noise(self, frame) -> tuple[float, float]:
        """(k, sigma2) of a RawFrame in normalised units, at the ISO its metadata gives."""
        iso = frame.meta.get("iso")
        if iso is None:
            raise InputError(f"a noise profile needs the frame's ISO, and {frame.meta.get('source', 'the file')} "
                             f"has none; pass --iso N (iso=)")
        return self.normalised(float(iso))

    def ksigma(self, anchor_iso: float) -> KSigma:
        """The manifest's k-sigma transform for this profile (coefficients in DN, v = white - black)."""
        return KSigma(k_coeffs=self.k_coeffs, sigma_coeffs=self.sigma2_coeffs, anchor_iso=float(anchor_iso),
                      v=self.range)

    # ---- files -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for f in ("k_coeffs", "sigma2_coeffs", "black_level", "iso_range"):
            d[f] = list(d[f])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "NoiseProfile":
        known = {"k_coeffs", "sigma2_coeffs", "black_level", "white_level", "iso_range", "name", "extra"}
        if not isinstance(d, Mapping) or not {"k_coeffs", "sigma2_coeffs", "black_level", "white_level"} <= set(d):
            raise InputError("a noise profile needs k_coeffs, sigma2_coeffs, black_level and white_level")
        return cls(**{k: v for k, v in d.items() if k in known})

    def save(self, path) -> Path:
        path = Path(path)
        if path.suffix.lower() in (".yaml", ".yml"):
            yaml = _yaml()
            text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        else:
            text = json.dumps(self.to_dict(), indent=2)
        with atomic_output(path) as tmp:
            tmp.write_text(text + "\n")
        return path

    @classmethod
    def load(cls, path) -> "NoiseProfile":
        path = Path(path)
        if not path.is_file():
            raise InputError(f"noise profile {path} does not exist")
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            d = _yaml().safe_load(text)
        else:
            try:
                d = json.loads(text)
            except json.JSONDecodeError as e:
                raise InputError(f"noise profile {path} is not valid JSON: {e}") from None
        return cls.from_dict(d)


def _yaml():
    try:
        import yaml
    except ImportError:
        from rawdenoise.errors import MissingDependencyError

        raise MissingDependencyError(
            "YAML noise profiles need the Python package 'PyYAML', which is not installed; "
            "install it with: pip install -e \".[yaml]\" (or use a .json profile)") from None
    return yaml


def default_profile() -> NoiseProfile:
    """A generic 14-bit small-sensor camera: the profile the default model is trained on.

    Gain 1 DN/e- at ISO 100 (about 16 000 e- full well, 1-inch class), doubling with each ISO
    stop; read noise 1.8 e- before the ISO amplifier and 3 DN after it, so sigma^2(ISO) is
    quadratic with no linear term.
    """
    g = 1.0 / 100.0  # DN per electron per ISO unit
    pre, post = 1.8, 3.0
    return NoiseProfile(
        k_coeffs=(g, 0.0),
        sigma2_coeffs=((g * pre) ** 2, 0.0, post ** 2),
        black_level=(512.0,) * 4,
        white_level=16383.0,
        iso_range=(100.0, 6400.0),
        name="generic-14bit-small-sensor",
        extra={"description": "generic 14-bit small-sensor camera: 1 DN/e- at ISO 100, read noise 1.8 e- + 3 DN"},
    )
