"""Build InvDN in PaddlePaddle as its Paddle reproduction structures it, save it both ways, run it.

    python paddle_invdn.py WORKDIR

Reads WORKDIR/input.npy (N, 3, H, W) in [0, 1], WORKDIR/z.npy (N, 45, H/4, W/4) (the latent)
and WORKDIR/noise.npy (N, 45, H, W) (the exported model's full-resolution noise). Writes:
  model_best.pdparams  a training checkpoint {"iter", "state_dict", "optimizer"} (paddle.save)
  output.npy           the test-time output: forward, low channels + z, blocks in reverse
  export/model.*       the one-forward model (input: image and noise, 48 channels; the noise
                       is average-pooled by 4 inside) saved with paddle.jit.save from a fresh layer
  output_jit.npy       that saved model's output for cat(input, noise)
Runs in its own process: the test never imports paddle.
"""

import sys
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn


class Subnet(nn.Layer):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = nn.Conv2D(cin, 64, 3, padding=1)
        self.conv2 = nn.Conv2D(64, 64, 3, padding=1)
        self.conv3 = nn.Conv2D(64 + cin, cout, 3, padding=1)

    def forward(self, x):
        r = F.leaky_relu(self.conv1(x), 0.2)
        r = F.leaky_relu(self.conv2(r), 0.2)
        return self.conv3(paddle.concat([x, r], 1))


class Coupling(nn.Layer):
    def __init__(self, channels):
        super().__init__()
        self.F = Subnet(channels - 3, 3)
        self.G = Subnet(3, channels - 3)
        self.H = Subnet(3, channels - 3)

    def forward(self, x, rev=False):
        x1, x2 = x[:, :3], x[:, 3:]
        if not rev:
            y1 = x1 + self.F(x2)
            y2 = x2 * paddle.exp(F.sigmoid(self.H(y1)) * 2 - 1) + self.G(y1)
        else:
            y2 = (x2 - self.G(x1)) / paddle.exp(F.sigmoid(self.H(x1)) * 2 - 1)
            y1 = x1 - self.F(y2)
        return paddle.concat([y1, y2], 1)


class Haar(nn.Layer):
    def __init__(self, channels):
        super().__init__()
        self.channels = channels
        w = np.ones((4, 1, 2, 2), np.float32)
        w[1, 0, 0, 1] = w[1, 0, 1, 1] = -1
        w[2, 0, 1, 0] = w[2, 0, 1, 1] = -1
        w[3, 0, 1, 0] = w[3, 0, 0, 1] = -1
        w = np.concatenate([w] * channels, 0)
        self.haar_weights = paddle.create_parameter(
            shape=list(w.shape), dtype="float32", default_initializer=nn.initializer.Assign(w))
        self.haar_weights.stop_gradient = True

    def forward(self, x, rev=False):
        n, c, h, w = x.shape
        if not rev:
            out = F.conv2d(x, self.haar_weights, stride=2, groups=self.channels) / 4.0
            out = out.reshape([n, self.channels, 4, h // 2, w // 2]).transpose([0, 2, 1, 3, 4])
            return out.reshape([n, self.channels * 4, h // 2, w // 2])
        out = x.reshape([n, 4, self.channels, h, w]).transpose([0, 2, 1, 3, 4]).reshape([n, c, h, w])
        return F.conv2d_transpose(out, self.haar_weights, stride=2, groups=self.channels)


class InvNet(nn.Layer):
    def __init__(self, blocks=(8, 8)):
        super().__init__()
        ops, c = [], 3
        for n in blocks:
            ops.append(Haar(c))
            c *= 4
            ops.extend(Coupling(c) for _ in range(n))
        self.operations = nn.LayerList(ops)

    def forward(self, x, rev=False):
        for op in (reversed(self.operations) if rev else self.operations):
            x = op(x, rev)
        return x


class OneForward(InvNet):
    """The reproduction's export form: one input of image and full-resolution noise."""

    def __init__(self, blocks=(8, 8)):
        super().__init__(blocks)
        self.pool = nn.AvgPool2D(4)

    def forward(self, x):
        img, noise = x[:, :3], self.pool(x[:, 3:])
        out = img
        for op in self.operations:
            out = op(out, False)
        out = paddle.concat([out[:, :3], noise], 1)
        for op in reversed(self.operations):
            out = op(out, True)
        return out


def main(work: Path) -> None:
    paddle.seed(11)
    x = np.load(work / "input.npy")
    z = np.load(work / "z.npy")
    noise = np.load(work / "noise.npy")
    model = InvNet()
    # random subnets make 16 chained exponential couplings overflow float32; small last layers
    # keep every coupling near the identity, as a trained network's are
    for name, p in model.named_parameters():
        if ".conv3." in name:
            p.set_value(p.numpy() * 0.05)
    model.eval()
    opt = paddle.optimizer.Adam(parameters=model.parameters(), learning_rate=1e-4)
    # one optimizer step so the checkpoint holds real optimizer state next to the weights
    loss = model(paddle.to_tensor(x))[:, :3].mean()
    loss.backward()
    opt.step()
    opt.clear_grad()
    paddle.save({"iter": 1, "state_dict": model.state_dict(), "optimizer": opt.state_dict()},
                str(work / "model_best.pdparams"))
    with paddle.no_grad():
        low = model(paddle.to_tensor(x))[:, :3]
        out = model(paddle.concat([low, paddle.to_tensor(z)], 1), rev=True)[:, :3]
    np.save(work / "output.npy", out.numpy())

    fresh = OneForward()          # a fresh layer: nothing computed eagerly is baked into the program
    fresh.set_state_dict(model.state_dict())
    fresh.eval()
    static = paddle.jit.to_static(fresh, input_spec=[paddle.static.InputSpec([None, 48, None, None], "float32")])
    paddle.jit.save(static, str(work / "export" / "model"))
    loaded = paddle.jit.load(str(work / "export" / "model"))
    loaded.eval()
    y = loaded(paddle.to_tensor(np.concatenate([x, noise], 1)))
    np.save(work / "output_jit.npy", y[:, :3].numpy())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    sys.exit(0)
