"""PMRID (ECCV 2020): packed RAW in and out, separable 5x5 encoder, light decoder.

Parameter names and shapes match the official PyTorch checkpoint, so a release state_dict
loads with strict=True. The network adds its input itself (its output is the denoised image,
not a residual). Weights expect RGGB packing of a [0, 1] frame, clipped, the k-sigma transform
with the published coefficients (anchor ISO 1600, V = 959), then x256; see `pmrid_spec`.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..spec import KSigma, ModelSpec
from .registry import register

# Published k-sigma calibration of the release (K and Sigma as polynomials of ISO,
# highest power first), anchor ISO and the white level V the coefficients are in units of.
PMRID_KSIGMA = KSigma(k_coeffs=(0.0005995267, 0.00868861),
                      sigma_coeffs=(7.11772e-7, 6.514934e-4, 0.11492713), anchor_iso=1600, v=959)
PMRID_SCALE = 256.0
# Four stride-2 encoder stages: packed sizes must be multiples of 2**4.
PMRID_MULTIPLE = 16
# Receptive-field radius in packed pixels, measured with zoo.measure_receptive_radius; tiles
# must be at least 2 x 483 + 16 wide for tiled output to equal untiled output, and 2048 keeps the
# recomputed margin affordable (frames up to 4096 x 4096 sensor pixels run in one pass).
PMRID_RECEPTIVE_RADIUS = 483


def _conv(cin: int, cout: int, k: int, stride: int = 1, separable: bool = False, relu: bool = False) -> nn.Sequential:
    """A conv (or depthwise + pointwise pair) with 'same' padding; names as in the release."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if separable:
        layers["depthwise"] = nn.Conv2d(cin, cin, k, stride, k // 2, groups=cin, bias=False)
        layers["pointwise"] = nn.Conv2d(cin, cout, 1)
    else:
        layers["conv"] = nn.Conv2d(cin, cout, k, stride, k // 2)
    if relu:
        layers["relu"] = nn.ReLU()
    return nn.Sequential(layers)


class _EncoderBlock(nn.Module):
    """Bottleneck residual block; a separable 3x3 projection when shape or stride changes."""

    def __init__(self, cin: int, cmid: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = _conv(cin, cmid, 5, stride, separable=True, relu=True)
        self.conv2 = _conv(cmid, cout, 5, 1, separable=True)
        self.proj = nn.Identity() if stride == 1 and cin == cout else _conv(cin, cout, 3, stride, separable=True)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.proj(x))


def _encoder_stage(cin: int, cout: int, blocks: int) -> nn.Sequential:
    stage = [_EncoderBlock(cin, cout // 4, cout, 2)]
    stage += [_EncoderBlock(cout, cout // 4, cout, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*stage)


class _DecoderBlock(nn.Module):
    """Two separable convs (ReLU between) around an identity shortcut."""

    def __init__(self, channels: int, k: int = 3):
        super().__init__()
        self.conv0 = _conv(channels, channels, k, separable=True, relu=True)
        self.conv1 = _conv(channels, channels, k, separable=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(self.conv0(x))


class _DecoderStage(nn.Module):
    """Refine, upsample x2 with a 2x2 transposed conv, add the projected skip."""

    def __init__(self, cin: int, skip_channels: int, cout: int):
        super().__init__()
        self.decode_conv = _DecoderBlock(cin)
        self.upsample = nn.ConvTranspose2d(cin, cout, kernel_size=2, stride=2)
        self.proj_conv = _conv(skip_channels, cout, 3, separable=True, relu=True)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.decode_conv(x)) + self.proj_conv(skip)


def pmrid_spec() -> ModelSpec:
    return ModelSpec(
        name="pmrid", layout="bayer4", channel_order="RGGB", in_channels=4, out_channels=4,
        scale=PMRID_SCALE, offset=0.0, clip_input=True, ksigma=PMRID_KSIGMA, output="image",
        multiple=PMRID_MULTIPLE, receptive_radius=PMRID_RECEPTIVE_RADIUS, tile=2048,
        notes={"preprocessing": "bayer/white in [0,1], RGGB 2x2 packing, clip to [0,1], k-sigma transform "
                                "to ISO 1600 (V=959), x256; network output is the image (it adds its input); "
                                "the inverse transforms follow",
               "reference": "MegEngine/PMRID models/net_torch.py, run_benchmark.py"},
    )


@register("pmrid", spec=pmrid_spec, description="PMRID (ECCV 2020): packed RGGB, k-sigma ISO transform, "
          "separable-conv encoder/decoder; loads the official PyTorch checkpoint")
class PMRID(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv0 = _conv(4, 16, 3, relu=True)
        self.enc1 = _encoder_stage(16, 64, 2)
        self.enc2 = _encoder_stage(64, 128, 2)
        self.enc3 = _encoder_stage(128, 256, 4)
        self.enc4 = _encoder_stage(256, 512, 4)
        self.encdec = _conv(512, 64, 3, separable=True, relu=True)
        self.dec1 = _DecoderStage(64, 256, 64)
        self.dec2 = _DecoderStage(64, 128, 32)
        self.dec3 = _DecoderStage(32, 64, 32)
        self.dec4 = _DecoderStage(32, 16, 16)
        self.out0 = _DecoderBlock(16)
        self.out1 = _conv(16, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = self.conv0(x)
        s1 = self.enc1(s0)
        s2 = self.enc2(s1)
        s3 = self.enc3(s2)
        y = self.encdec(self.enc4(s3))
        y = self.dec1(y, s3)
        y = self.dec2(y, s2)
        y = self.dec3(y, s1)
        y = self.dec4(y, s0)
        return x + self.out1(self.out0(y))
