"""The RAW UNet of the seed pipelines: packed Bayer in and out, global residual."""

from __future__ import annotations

import torch
from torch import nn

from ..spec import ModelSpec
from .registry import register


def _block(cin: int, cout: int, slope: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(slope, inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.LeakyReLU(slope, inplace=True),
    )


def unet_spec(in_channels: int = 4, out_channels: int = 4, width: int = 32, depth: int = 4,
              residual: bool = True, negative_slope: float = 0.2) -> ModelSpec:
    m = 2 ** depth
    return ModelSpec(name="unet", layout="bayer4", channel_order="RGGB", in_channels=in_channels,
                     out_channels=out_channels, multiple=m, tile=max(256, 8 * m), output="image")


@register("unet", spec=unet_spec, description="RAW UNet: 4-channel packed Bayer, max-pool encoder, "
          "transposed-conv decoder with skips, leaky ReLU, global residual")
class UNet(nn.Module):
    def __init__(self, in_channels: int = 4, out_channels: int = 4, width: int = 32, depth: int = 4,
                 residual: bool = True, negative_slope: float = 0.2):
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError("depth and width must be >= 1")
        if residual and out_channels > in_channels:
            raise ValueError("a residual UNet cannot have more outputs than inputs")
        self.residual = residual
        self.out_channels = out_channels
        widths = [width * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths[:-1]:
            self.down.append(_block(cin, w, negative_slope))
            cin = w
        self.pool = nn.MaxPool2d(2)
        self.bottom = _block(widths[-2], widths[-1], negative_slope)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for w_hi, w_lo in zip(widths[:0:-1], widths[-2::-1]):
            self.up.append(nn.ConvTranspose2d(w_hi, w_lo, 2, stride=2))
            self.dec.append(_block(2 * w_lo, w_lo, negative_slope))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        y = x
        for block in self.down:
            y = block(y)
            skips.append(y)
            y = self.pool(y)
        y = self.bottom(y)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            y = dec(torch.cat([up(y), skip], dim=1))
        y = self.head(y)
        if self.residual:
            y = y + x[:, : self.out_channels]
        return y
