"""InvDN (Invertible Denoising Network, CVPR 2021): sRGB in and out, a random latent at test time.

The network is invertible: two Haar-wavelet downsamplings, each followed by affine coupling
blocks. At test time the noisy image goes forward; the 3 low-resolution channels are kept, the
45 high-frequency (latent) channels are replaced by a Gaussian sample, and the blocks run in
reverse to the clean image. Here the latent is the module's second input `z` (N, 45, H/4, W/4),
declared in the manifest as a seeded Gaussian input, so the SDK draws it as a function of the
position in the frame (tiled == untiled, runs reproducible) and can average several draws
(`samples`, the paper's Monte-Carlo estimate).

Parameter names and shapes are those of the official checkpoint (`operations.0.haar_weights`,
`operations.1.F.conv1.weight`, ...), which the Paddle reproduction shares.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..spec import ExtraInput, ModelSpec
from .registry import register

FEATURES = 64          # width of the coupling subnets
LOW_CHANNELS = 3       # channels kept from the forward pass (the low-resolution image)
# Receptive radius of InvDN(blocks=(8, 8)) in pixels, for grid-aligned 4 x 4 blocks: each coupling
# reaches 6 of its grid's pixels each way, forward and back, at strides 2 and 4: 2 x (8 x 6 x 2 +
# 8 x 6 x 4) - 12 = 564 (zoo.measure_receptive_radius gives 24 b1 + 48 b2 - 12 for smaller stacks).
INVDN_RECEPTIVE_RADIUS = 564


class _Subnet(nn.Module):
    """Three 3x3 convolutions; the last one sees the input again (dense skip)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, FEATURES, 3, padding=1)
        self.conv2 = nn.Conv2d(FEATURES, FEATURES, 3, padding=1)
        self.conv3 = nn.Conv2d(FEATURES + cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = F.leaky_relu(self.conv1(x), 0.2)
        r = F.leaky_relu(self.conv2(r), 0.2)
        return self.conv3(torch.cat((x, r), 1))


class _Coupling(nn.Module):
    """Affine coupling: the first LOW_CHANNELS channels and the rest update each other in turn."""

    def __init__(self, channels: int, clamp: float = 1.0):
        super().__init__()
        rest = channels - LOW_CHANNELS
        self.clamp = clamp
        self.F = _Subnet(rest, LOW_CHANNELS)
        self.G = _Subnet(LOW_CHANNELS, rest)
        self.H = _Subnet(LOW_CHANNELS, rest)

    def _scale(self, x1: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.clamp * (torch.sigmoid(self.H(x1)) * 2 - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[:, :LOW_CHANNELS], x[:, LOW_CHANNELS:]
        y1 = x1 + self.F(x2)
        return torch.cat((y1, x2 * self._scale(y1) + self.G(y1)), 1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = y[:, :LOW_CHANNELS], y[:, LOW_CHANNELS:]
        x2 = (y2 - self.G(y1)) / self._scale(y1)
        return torch.cat((y1 - self.F(x2), x2), 1)


def haar_filters(channels: int) -> torch.Tensor:
    """The four 2x2 Haar filters (mean, then three signed differences), repeated per channel."""
    h = torch.ones(4, 1, 2, 2)
    h[1, 0, :, 1] = -1                   # left minus right
    h[2, 0, 1, :] = -1                   # top minus bottom
    h[3, 0, 0, 1] = h[3, 0, 1, 0] = -1   # diagonal
    return h.repeat(channels, 1, 1, 1)


class _Haar(nn.Module):
    """Orthogonal 2x2 Haar transform to 4x the channels at half the size, grouped by filter."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        # a parameter (not a buffer) because the published checkpoints store it as one
        self.haar_weights = nn.Parameter(haar_filters(channels), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = F.conv2d(x, self.haar_weights, stride=2, groups=self.channels) / 4.0
        # (channel, filter) -> (filter, channel): all mean bands first
        return y.reshape(n, c, 4, h // 2, w // 2).transpose(1, 2).reshape(n, 4 * c, h // 2, w // 2)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        n, c4, h, w = y.shape
        y = y.reshape(n, 4, c4 // 4, h, w).transpose(1, 2).reshape(n, c4, h, w)
        # the filters are orthogonal, each of squared norm 4, which the forward divided by: the
        # transposed filters alone invert it
        return F.conv_transpose2d(y, self.haar_weights, stride=2, groups=self.channels)


def invdn_spec(blocks: tuple[int, ...] = (8, 8)) -> ModelSpec:
    latent = LOW_CHANNELS * 4 ** len(blocks) - LOW_CHANNELS
    m = 2 ** len(blocks)
    published = tuple(blocks) == (8, 8)
    # exact tiles need 2 x 564 pixels of overlap: 2048-pixel tiles cost about 5 x one pass over
    # the frame, and hold a few 1024 x 1024 x 64 float32 feature maps
    return ModelSpec(
        name="invdn", layout="rgb", channel_order="RGB", in_channels=3, out_channels=3, output="image",
        multiple=m, tile=2048 if published else 512, receptive_radius=INVDN_RECEPTIVE_RADIUS if published else 0,
        inputs=(ExtraInput(name="z", kind="gaussian", channels=latent, stride=m, std=1.0, seed=0),),
        notes={"preprocessing": "sRGB in [0, 1]; the latent z is N(0, 1) at 1/4 resolution (the official "
                                "test's gaussian_scale 1)",
               "reference": "Yang-Liu1082/InvDN codes/models/modules/Inv_arch.py, models/InvDN_model.py"},
    )


@register("invdn", spec=invdn_spec, description="InvDN (CVPR 2021): invertible Haar + coupling network, sRGB, "
          "a Gaussian latent at 1/4 resolution; loads the official .pth and the Paddle .pdparams")
class InvDN(nn.Module):
    """InvNet(3, 3, ResBlock subnets, block_num=blocks, down_num=len(blocks)) at test time."""

    def __init__(self, blocks: tuple[int, ...] = (8, 8)):
        super().__init__()
        ops: list[nn.Module] = []
        channels = 3
        for n in blocks:
            ops.append(_Haar(channels))
            channels *= 4
            ops.extend(_Coupling(channels) for _ in range(n))
        self.operations = nn.ModuleList(ops)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        for op in self.operations:
            x = op(x)
        return x

    def decode(self, y: torch.Tensor) -> torch.Tensor:
        for op in reversed(self.operations):
            y = op.inverse(y)
        return y

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        low = self.encode(x)[:, :LOW_CHANNELS]
        return self.decode(torch.cat((low, z), 1))[:, :LOW_CHANNELS]
