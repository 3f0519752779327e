"""Save a small Paddle layer's state_dict with paddle.save at a given pickle protocol.

    python paddle_save_params.py OUT.pdparams PROTOCOL REF.npz

REF.npz receives the same arrays (from Layer.state_dict()), as the independent reference.
"""

import sys

import numpy as np
import paddle
from paddle import nn


def main():
    out, protocol, ref = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    paddle.seed(1)
    net = nn.Sequential(nn.Conv2D(3, 4, 3), nn.BatchNorm2D(4), nn.Conv2DTranspose(4, 2, 2, stride=2),
                        nn.Flatten(), nn.Linear(8, 5))
    sd = net.state_dict()
    np.savez(ref, **{k: v.numpy() for k, v in sd.items()})
    paddle.save(sd, out, protocol=protocol)
    return 0


if __name__ == "__main__":
    sys.exit(main())
