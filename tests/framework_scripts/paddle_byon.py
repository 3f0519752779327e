"""Build denoisers the way a user would in PaddlePaddle ("bring your own network"), with random
weights, save them with paddle.jit.save and run them.

    python paddle_byon.py WORKDIR

For every network NAME in NETS, reads WORKDIR/NAME/input.npz (one array per forward argument,
N x C x H x W float32) and writes WORKDIR/NAME/model.json + model.pdiparams (saved from the freshly
built layer with InputSpec([None, C, None, None]), before it ever runs) and WORKDIR/NAME/output.npy
(the Paddle forward output). Also writes WORKDIR/gray_pdmodel/model.pdmodel (the same 'gray'
network in the pre-3.0 program format), WORKDIR/stateful/model.json (a layer that stores a tensor
in forward, saved after an eager run) and, where paddle2onnx is installed, WORKDIR/rgb/raw.onnx:
paddle2onnx's own output for 'rgb', before any repair. Runs in its own process: the tests never
import paddle.
"""

import os
import sys

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn


def unshuffle(x, r=2):
    """Space-to-depth by reshape/transpose: nn.PixelUnshuffle cannot be saved with dynamic H/W
    in Paddle 3.3 (its shape check rejects the -1 sizes)."""
    size = paddle.shape(x)
    c = x.shape[1]
    y = x.reshape([-1, c, size[2] // r, r, size[3] // r, r]).transpose([0, 1, 3, 5, 2, 4])
    return y.reshape([-1, c * r * r, size[2] // r, size[3] // r])


class RGBNet(nn.Layer):
    """3 -> 3: space-to-depth, BatchNorm, LeakyReLU(0.2), a sigmoid gate, PixelShuffle, global residual."""

    def __init__(self, width=16):
        super().__init__()
        self.head = nn.Conv2D(12, width, 3, padding=1)
        self.bn = nn.BatchNorm2D(width)
        self.act = nn.LeakyReLU(0.2)
        self.gate = nn.Conv2D(width, width, 1)
        self.body = nn.Conv2D(width, width, 3, padding=1)
        self.tail = nn.Conv2D(width, 12, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x):
        f = self.act(self.bn(self.head(unshuffle(x))))
        f = f * F.sigmoid(self.gate(f))
        f = F.leaky_relu(self.body(f), 0.05)
        return x + self.shuffle(self.tail(f))


class MosaicNet(nn.Layer):
    """1 -> 1 on the CFA frame: a stride-2 conv down, a transposed conv up, a skip; returns the residual."""

    def __init__(self, width=8):
        super().__init__()
        self.inp = nn.Conv2D(1, width, 3, padding=1)
        self.down = nn.Conv2D(width, 2 * width, 4, stride=2, padding=1)
        self.mid = nn.Conv2D(2 * width, 2 * width, 3, padding=1)
        self.up = nn.Conv2DTranspose(2 * width, width, 4, stride=2, padding=1)
        self.out = nn.Conv2D(2 * width, 1, 3, padding=1)

    def forward(self, x):
        a = F.relu(self.inp(x))
        b = F.relu(self.mid(F.relu(self.down(a))))
        return self.out(paddle.concat([self.up(b), a], axis=1))


class GrayNet(nn.Layer):
    """FFDNet-like: grayscale image + a noise-level map, concatenated; returns image - predicted noise."""

    def __init__(self, width=12):
        super().__init__()
        self.c1 = nn.Conv2D(2, width, 3, padding=1)
        self.c2 = nn.Conv2D(width, width, 3, padding=2, dilation=2)
        self.c3 = nn.Conv2D(width, 1, 3, padding=1)

    def forward(self, img, sigma):
        f = F.relu(self.c1(paddle.concat([img, sigma], axis=1)))
        return img - self.c3(F.leaky_relu(self.c2(f), 0.1))


class Stateful(nn.Layer):
    """Stores a tensor on itself in forward: run eagerly before jit.save, that tensor is baked in."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2D(1, 1, 3, padding=1)

    def forward(self, x):
        self.mean = x.mean(axis=[2, 3], keepdim=True)
        return self.conv(x - self.mean) + self.mean


# name -> (class, channels of each forward argument)
NETS = {"rgb": (RGBNet, {"x": 3}), "mosaic": (MosaicNet, {"x": 1}), "gray": (GrayNet, {"img": 1, "sigma": 1})}


def randomise(net, rng):
    """Random weights, biases and BatchNorm running statistics (Paddle's defaults are zero biases,
    mean 0 and variance 1, which would hide a mix-up)."""
    for name, p in net.named_parameters():
        if name.endswith("bias"):
            value = rng.normal(0.0, 0.05, p.shape)
        elif len(p.shape) == 1:  # BatchNorm scale
            value = rng.uniform(0.5, 1.5, p.shape)
        else:
            value = rng.normal(0.0, 1.5 / np.sqrt(np.prod(p.shape[1:])), p.shape)
        p.set_value(value.astype("float32"))
    for name, b in net.named_buffers():
        if name.endswith("_mean"):
            b.set_value(rng.normal(0.0, 0.2, b.shape).astype("float32"))
        elif name.endswith("_variance"):
            b.set_value(rng.uniform(0.5, 2.0, b.shape).astype("float32"))


def main():
    work = sys.argv[1]
    paddle.set_device("cpu")
    paddle.seed(0)
    rng = np.random.default_rng(0)
    for name, (cls, inputs) in NETS.items():
        net = cls()
        randomise(net, rng)
        net.eval()
        specs = [paddle.static.InputSpec([None, c, None, None], "float32", name=n) for n, c in inputs.items()]
        # saved before the layer ever runs: a fresh layer has no eager state to bake in
        paddle.jit.save(net, os.path.join(work, name, "model"), input_spec=specs)
        if name == "gray":
            with paddle.pir_utils.DygraphOldIrGuard():
                paddle.jit.save(net, os.path.join(work, "gray_pdmodel", "model"), input_spec=specs)
        feed = np.load(os.path.join(work, name, "input.npz"))
        with paddle.no_grad():
            y = net(*[paddle.to_tensor(feed[n]) for n in inputs]).numpy()
        np.save(os.path.join(work, name, "output.npy"), y)
    # the pitfall the converter warns about: saved after an eager run
    net = Stateful()
    net(paddle.rand([1, 1, 8, 8]))
    paddle.jit.save(net, os.path.join(work, "stateful", "model"),
                    input_spec=[paddle.static.InputSpec([None, 1, None, None], "float32")])
    try:
        import paddle2onnx
    except ImportError:
        return 0
    prefix = os.path.join(work, "rgb", "model")
    raw = paddle2onnx.export(prefix + ".json", prefix + ".pdiparams", None, opset_version=17,
                             auto_upgrade_opset=False, enable_optimize=False)
    with open(os.path.join(work, "rgb", "raw.onnx"), "wb") as f:
        f.write(raw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
