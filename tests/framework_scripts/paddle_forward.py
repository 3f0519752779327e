"""Build a zoo architecture in PaddlePaddle with random weights, save it, run it.

    python paddle_forward.py ARCH WORKDIR [--protocol N] [--seed S]

Reads WORKDIR/input.npy (N, C, H, W float32 network input), writes WORKDIR/weights.pdparams
(paddle.save) and WORKDIR/output.npy (the Paddle forward output). Runs in its own process:
the test never imports paddle.
"""

import argparse
import os
import sys

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn


# ---- n2n_paddle: the Paddle Noise2Noise U-Net -------------------------------------------------
def _c(cin, cout):
    return nn.Conv2D(cin, cout, 3, padding=1)


def _up(c):
    return nn.Conv2DTranspose(c, c, 3, stride=2, padding=1, output_padding=1)


class N2NPaddle(nn.Layer):
    def __init__(self):
        super().__init__()
        self._block1 = nn.Sequential(_c(3, 48), nn.ReLU(), _c(48, 48), nn.ReLU(), nn.MaxPool2D(2))
        self._block2 = nn.Sequential(_c(48, 48), nn.ReLU(), nn.MaxPool2D(2))
        self._block3 = nn.Sequential(_c(48, 48), nn.ReLU(), _up(48))
        self._block4 = nn.Sequential(_c(96, 96), nn.ReLU(), _c(96, 96), nn.ReLU(), _up(96))
        self._block5 = nn.Sequential(_c(144, 96), nn.ReLU(), _c(96, 96), nn.ReLU(), _up(96))
        self._block6 = nn.Sequential(_c(99, 64), nn.ReLU(), _c(64, 32), nn.ReLU(), _c(32, 3), nn.LeakyReLU(0.1))

    def forward(self, x):
        p1 = self._block1(x)
        p2 = self._block2(p1)
        p3 = self._block2(p2)
        p4 = self._block2(p3)
        p5 = self._block2(p4)
        y = self._block4(paddle.concat([self._block3(p5), p4], axis=1))
        y = self._block5(paddle.concat([y, p3], axis=1))
        y = self._block5(paddle.concat([y, p2], axis=1))
        y = self._block5(paddle.concat([y, p1], axis=1))
        return self._block6(paddle.concat([y, x], axis=1))


# ---- n2n: NVIDIA's autoencoder, layer names as its TF variable scopes -------------------------
class N2N(nn.Layer):
    DEC = [("dec_conv5", 96, 96), ("dec_conv5b", 96, 96), ("dec_conv4", 144, 96), ("dec_conv4b", 96, 96),
           ("dec_conv3", 144, 96), ("dec_conv3b", 96, 96), ("dec_conv2", 144, 96), ("dec_conv2b", 96, 96),
           ("dec_conv1a", 99, 64), ("dec_conv1b", 64, 32), ("dec_conv1", 32, 3)]

    def __init__(self):
        super().__init__()
        for i in range(7):
            setattr(self, f"enc_conv{i}", _c(3 if i == 0 else 48, 48))
        for name, cin, cout in self.DEC:
            setattr(self, name, _c(cin, cout))

    def forward(self, x):
        def lr(name, t):
            return F.leaky_relu(getattr(self, name)(t), 0.1)

        skips = [x]
        n = F.max_pool2d(lr("enc_conv1", lr("enc_conv0", x)), 2)
        skips.append(n)
        for i in (2, 3, 4):
            n = F.max_pool2d(lr(f"enc_conv{i}", n), 2)
            skips.append(n)
        n = lr("enc_conv6", F.max_pool2d(lr("enc_conv5", n), 2))
        for a, b in (("dec_conv5", "dec_conv5b"), ("dec_conv4", "dec_conv4b"), ("dec_conv3", "dec_conv3b"),
                     ("dec_conv2", "dec_conv2b"), ("dec_conv1a", "dec_conv1b")):
            n = paddle.concat([F.interpolate(n, scale_factor=2, mode="nearest"), skips.pop()], axis=1)
            n = lr(b, lr(a, n))
        return self.dec_conv1(n)


# ---- pmrid ------------------------------------------------------------------------------------
def _pconv(cin, cout, k, stride=1, sep=False, relu=False):
    layers = []
    if sep:
        layers += [("depthwise", nn.Conv2D(cin, cin, k, stride, k // 2, groups=cin, bias_attr=False)),
                   ("pointwise", nn.Conv2D(cin, cout, 1))]
    else:
        layers += [("conv", nn.Conv2D(cin, cout, k, stride, k // 2))]
    if relu:
        layers += [("relu", nn.ReLU())]
    return nn.Sequential(*layers)


class EncBlock(nn.Layer):
    def __init__(self, cin, cmid, cout, stride):
        super().__init__()
        self.conv1 = _pconv(cin, cmid, 5, stride, True, True)
        self.conv2 = _pconv(cmid, cout, 5, 1, True)
        self.proj = nn.Identity() if stride == 1 and cin == cout else _pconv(cin, cout, 3, stride, True)

    def forward(self, x):
        return F.relu(self.conv2(self.conv1(x)) + self.proj(x))


def enc_stage(cin, cout, n):
    return nn.Sequential(EncBlock(cin, cout // 4, cout, 2), *[EncBlock(cout, cout // 4, cout, 1) for _ in range(n - 1)])


class DecBlock(nn.Layer):
    def __init__(self, c):
        super().__init__()
        self.conv0 = _pconv(c, c, 3, 1, True, True)
        self.conv1 = _pconv(c, c, 3, 1, True)

    def forward(self, x):
        return x + self.conv1(self.conv0(x))


class DecStage(nn.Layer):
    def __init__(self, cin, cskip, cout):
        super().__init__()
        self.decode_conv = DecBlock(cin)
        self.upsample = nn.Conv2DTranspose(cin, cout, 2, stride=2)
        self.proj_conv = _pconv(cskip, cout, 3, 1, True, True)

    def forward(self, x, skip):
        return self.upsample(self.decode_conv(x)) + self.proj_conv(skip)


class PMRID(nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv0 = _pconv(4, 16, 3, relu=True)
        self.enc1 = enc_stage(16, 64, 2)
        self.enc2 = enc_stage(64, 128, 2)
        self.enc3 = enc_stage(128, 256, 4)
        self.enc4 = enc_stage(256, 512, 4)
        self.encdec = _pconv(512, 64, 3, 1, True, True)
        self.dec1 = DecStage(64, 256, 64)
        self.dec2 = DecStage(64, 128, 32)
        self.dec3 = DecStage(32, 64, 32)
        self.dec4 = DecStage(32, 16, 16)
        self.out0 = DecBlock(16)
        self.out1 = _pconv(16, 4, 3)

    def forward(self, x):
        s0 = self.conv0(x)
        s1 = self.enc1(s0)
        s2 = self.enc2(s1)
        s3 = self.enc3(s2)
        y = self.encdec(self.enc4(s3))
        y = self.dec4(self.dec3(self.dec2(self.dec1(y, s3), s2), s1), s0)
        return x + self.out1(self.out0(y))


ARCHS = {"n2n_paddle": N2NPaddle, "n2n": N2N, "pmrid": PMRID}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("arch", choices=sorted(ARCHS))
    ap.add_argument("workdir")
    ap.add_argument("--protocol", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    paddle.set_device("cpu")
    paddle.seed(a.seed)
    net = ARCHS[a.arch]()
    # random biases too (paddle initialises them to zero), so a bias mix-up cannot hide
    rng = np.random.default_rng(a.seed)
    for name, p in net.named_parameters():
        if name.endswith("bias"):
            p.set_value(rng.normal(0, 0.05, p.shape).astype("float32"))
    net.eval()
    paddle.save(net.state_dict(), os.path.join(a.workdir, "weights.pdparams"), protocol=a.protocol)
    x = paddle.to_tensor(np.load(os.path.join(a.workdir, "input.npy")))
    with paddle.no_grad():
        y = net(x).numpy()
    np.save(os.path.join(a.workdir, "output.npy"), y)
    return 0


if __name__ == "__main__":
    sys.exit(main())
