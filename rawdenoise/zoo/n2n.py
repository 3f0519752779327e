"""Noise2Noise RGB U-Nets whose parameters match two published checkpoints one to one.

`n2n`: NVIDIA's TensorFlow `autoencoder` (RGB in [-0.5, 0.5]); parameter `enc_conv0.weight`
holds TF variable `enc_conv0/weight` (HWIO there, OIHW here). Leaky ReLU 0.1 after every conv but
the last, five 2x2 max-pools, nearest-neighbour x2 upsampling, skips concatenated after the
upsampled features, no global residual.

`n2n_paddle`: the PaddlePaddle port (RGB in [0, 1]); state_dict names equal the `.pdparams`
names (`_block1.0.weight` ...). ReLU inside, 3x3 stride-2 transposed convs for upsampling, and a
leaky ReLU 0.1 after the final conv. `_block2` and `_block5` are applied several times with
shared weights, as in the original.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..spec import ModelSpec
from .registry import register

_ENC = ("enc_conv0", "enc_conv1", "enc_conv2", "enc_conv3", "enc_conv4", "enc_conv5", "enc_conv6")
# (name, in, out) of the decoder convs, in execution order
_DEC = (("dec_conv5", 96, 96), ("dec_conv5b", 96, 96), ("dec_conv4", 144, 96), ("dec_conv4b", 96, 96),
        ("dec_conv3", 144, 96), ("dec_conv3b", 96, 96), ("dec_conv2", 144, 96), ("dec_conv2b", 96, 96),
        ("dec_conv1a", 99, 64), ("dec_conv1b", 64, 32), ("dec_conv1", 32, 3))
N2N_MULTIPLE = 32  # five 2x2 max-pools
# receptive_radius values below were measured with zoo.measure_receptive_radius


def n2n_spec() -> ModelSpec:
    return ModelSpec(
        name="n2n", layout="rgb", channel_order="RGB", in_channels=3, out_channels=3,
        scale=1.0, offset=-0.5, output="image", multiple=N2N_MULTIPLE, receptive_radius=128, tile=512,
        notes={"preprocessing": "RGB / white (uint8/255) - 0.5, NCHW; output in the same range",
               "reference": "NVlabs/noise2noise network.py autoencoder, validation.py"},
    )


@register("n2n", spec=n2n_spec, description="Noise2Noise autoencoder (NVIDIA TF release): RGB in [-0.5, 0.5], "
          "parameters named like its TF variables")
class N2N(nn.Module):
    def __init__(self):
        super().__init__()
        for i, name in enumerate(_ENC):
            setattr(self, name, nn.Conv2d(3 if i == 0 else 48, 48, 3, padding=1))
        for name, cin, cout in _DEC:
            setattr(self, name, nn.Conv2d(cin, cout, 3, padding=1))

    def _lr(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(getattr(self, name)(x), 0.1)

    @staticmethod
    def _up(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.interpolate(x, scale_factor=2.0, mode="nearest"), skip], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [x]
        n = self._lr("enc_conv1", self._lr("enc_conv0", x))
        n = F.max_pool2d(n, 2)
        for name in ("enc_conv2", "enc_conv3", "enc_conv4"):
            skips.append(n)
            n = F.max_pool2d(self._lr(name, n), 2)
        skips.append(n)
        n = F.max_pool2d(self._lr("enc_conv5", n), 2)
        n = self._lr("enc_conv6", n)
        for a, b in (("dec_conv5", "dec_conv5b"), ("dec_conv4", "dec_conv4b"),
                     ("dec_conv3", "dec_conv3b"), ("dec_conv2", "dec_conv2b"), ("dec_conv1a", "dec_conv1b")):
            n = self._lr(b, self._lr(a, self._up(n, skips.pop())))
        return self.dec_conv1(n)


def n2n_paddle_spec() -> ModelSpec:
    return ModelSpec(
        name="n2n_paddle", layout="rgb", channel_order="RGB", in_channels=3, out_channels=3,
        scale=1.0, offset=0.0, output="image", multiple=N2N_MULTIPLE, receptive_radius=160, tile=512,
        notes={"preprocessing": "RGB / white in [0, 1] (to_tensor), NCHW; output in the same range",
               "reference": "Paddle-Team-7/noise2noise-paddle src/unet.py"},
    )


def _c(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


def _up(c: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(c, c, 3, stride=2, padding=1, output_padding=1)


@register("n2n_paddle", spec=n2n_paddle_spec, description="Noise2Noise U-Net (PaddlePaddle port): RGB in [0, 1], "
          "parameters named like its .pdparams")
class N2NPaddle(nn.Module):
    def __init__(self, in_channels: int = 3, out_channels: int = 3):
        super().__init__()
        self._block1 = nn.Sequential(_c(in_channels, 48), nn.ReLU(), _c(48, 48), nn.ReLU(), nn.MaxPool2d(2))
        self._block2 = nn.Sequential(_c(48, 48), nn.ReLU(), nn.MaxPool2d(2))
        self._block3 = nn.Sequential(_c(48, 48), nn.ReLU(), _up(48))
        self._block4 = nn.Sequential(_c(96, 96), nn.ReLU(), _c(96, 96), nn.ReLU(), _up(96))
        self._block5 = nn.Sequential(_c(144, 96), nn.ReLU(), _c(96, 96), nn.ReLU(), _up(96))
        self._block6 = nn.Sequential(_c(96 + in_channels, 64), nn.ReLU(), _c(64, 32), nn.ReLU(),
                                     _c(32, out_channels), nn.LeakyReLU(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p1 = self._block1(x)
        p2 = self._block2(p1)
        p3 = self._block2(p2)
        p4 = self._block2(p3)
        p5 = self._block2(p4)
        y = self._block4(torch.cat([self._block3(p5), p4], 1))
        y = self._block5(torch.cat([y, p3], 1))
        y = self._block5(torch.cat([y, p2], 1))
        y = self._block5(torch.cat([y, p1], 1))
        return self._block6(torch.cat([y, x], 1))
