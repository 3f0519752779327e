"""Build a zoo architecture in TensorFlow/Keras with random weights, save it natively, run it.

    python tf_forward.py ARCH WORKDIR --formats checkpoint,h5,weights_h5,keras [--seed S]

Reads WORKDIR/input.npy (N, C, H, W float32 network input), writes the weights (checkpoint:
WORKDIR/ckpt/model.* via tf.train.Checkpoint over modules named like the layers; h5: legacy
Keras WORKDIR/model.h5; weights_h5: Keras 3 WORKDIR/model.weights.h5; keras: WORKDIR/model.keras)
and WORKDIR/output.npy (NCHW). Keras runs NHWC on CPU; the script transposes at the boundary.
Runs in its own process.
"""

import argparse
import os
import sys

import numpy as np
import tensorflow as tf
import keras
from keras import layers as L


# ---- n2n: NVIDIA's autoencoder ----------------------------------------------------------------
def build_n2n(h, w):
    def conv(name, cout, t, act=True):
        t = L.Conv2D(cout, 3, padding="same", name=name)(t)
        return L.LeakyReLU(negative_slope=0.1)(t) if act else t

    inp = keras.Input((h, w, 3))
    skips = [inp]
    n = L.MaxPool2D(2)(conv("enc_conv1", 48, conv("enc_conv0", 48, inp)))
    skips.append(n)
    for i in (2, 3, 4):
        n = L.MaxPool2D(2)(conv(f"enc_conv{i}", 48, n))
        skips.append(n)
    n = conv("enc_conv6", 48, L.MaxPool2D(2)(conv("enc_conv5", 48, n)))
    for a, b, ca, cb in (("dec_conv5", "dec_conv5b", 96, 96), ("dec_conv4", "dec_conv4b", 96, 96),
                         ("dec_conv3", "dec_conv3b", 96, 96), ("dec_conv2", "dec_conv2b", 96, 96),
                         ("dec_conv1a", "dec_conv1b", 64, 32)):
        n = L.Concatenate(axis=-1)([L.UpSampling2D(2, interpolation="nearest")(n), skips.pop()])
        n = conv(b, cb, conv(a, ca, n))
    out = conv("dec_conv1", 3, n, act=False)
    return keras.Model(inp, out)


# ---- pmrid: layers created eagerly and kept in a tree named like the torch module -------------
class Tree(tf.Module):
    pass


def _child(parent, name):
    node = getattr(parent, name, None)
    if node is None:
        node = Tree()
        setattr(parent, name, node)
    return node


class PMRIDBuilder:
    def __init__(self):
        self.root = Tree()

    def node(self, path):
        n = self.root
        for part in path.split("."):
            n = _child(n, part)
        return n

    def conv(self, path, t, cout, k, stride=1, sep=False, relu=False):
        node = self.node(path)
        t = L.ZeroPadding2D(k // 2)(t)
        # layers are created on the first pass and reused on later ones
        if sep:
            if not hasattr(node, "depthwise"):
                node.depthwise = L.DepthwiseConv2D(k, strides=stride, padding="valid", use_bias=False)
                node.pointwise = L.Conv2D(cout, 1)
            t = node.pointwise(node.depthwise(t))
        else:
            if not hasattr(node, "conv"):
                node.conv = L.Conv2D(cout, k, strides=stride, padding="valid")
            t = node.conv(t)
        return tf.nn.relu(t) if relu else t

    def enc_block(self, path, t, cmid, cout, stride):
        cin = t.shape[-1]
        y = self.conv(f"{path}.conv2", self.conv(f"{path}.conv1", t, cmid, 5, stride, True, True), cout, 5, 1, True)
        proj = t if stride == 1 and cin == cout else self.conv(f"{path}.proj", t, cout, 3, stride, True)
        return tf.nn.relu(y + proj)

    def enc_stage(self, path, t, cout, n):
        t = self.enc_block(f"{path}.0", t, cout // 4, cout, 2)
        for i in range(1, n):
            t = self.enc_block(f"{path}.{i}", t, cout // 4, cout, 1)
        return t

    def dec_block(self, path, t):
        c = t.shape[-1]
        return t + self.conv(f"{path}.conv1", self.conv(f"{path}.conv0", t, c, 3, 1, True, True), c, 3, 1, True)

    def dec_stage(self, path, t, skip, cout):
        t = self.dec_block(f"{path}.decode_conv", t)
        node = self.node(path)
        if not hasattr(node, "upsample"):
            node.upsample = L.Conv2DTranspose(cout, 2, strides=2, padding="valid")
        return node.upsample(t) + self.conv(f"{path}.proj_conv", skip, cout, 3, 1, True, True)

    def forward(self, x):
        s0 = self.conv("conv0", x, 16, 3, relu=True)
        s1 = self.enc_stage("enc1", s0, 64, 2)
        s2 = self.enc_stage("enc2", s1, 128, 2)
        s3 = self.enc_stage("enc3", s2, 256, 4)
        y = self.conv("encdec", self.enc_stage("enc4", s3, 512, 4), 64, 3, 1, True, True)
        y = self.dec_stage("dec1", y, s3, 64)
        y = self.dec_stage("dec2", y, s2, 32)
        y = self.dec_stage("dec3", y, s1, 32)
        y = self.dec_stage("dec4", y, s0, 16)
        return x + self.conv("out1", self.dec_block("out0", y), 4, 3)


def randomise_biases(variables, seed):
    rng = np.random.default_rng(seed)
    for v in variables:
        if "bias" in getattr(v, "path", v.name):
            v.assign(rng.normal(0, 0.05, v.shape).astype("float32"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("arch", choices=["n2n", "pmrid"])
    ap.add_argument("workdir")
    ap.add_argument("--formats", default="checkpoint", help="comma-separated: checkpoint, h5, weights_h5, keras")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    keras.utils.set_random_seed(a.seed)
    x = np.load(os.path.join(a.workdir, "input.npy")).transpose(0, 2, 3, 1)
    if a.arch == "n2n":
        model = build_n2n(x.shape[1], x.shape[2])
        randomise_biases(model.weights, a.seed)
        y = model(x, training=False).numpy()
        formats = a.formats.split(",")
        if "h5" in formats:
            model.save(os.path.join(a.workdir, "model.h5"))
        if "keras" in formats:
            model.save(os.path.join(a.workdir, "model.keras"))
        if "weights_h5" in formats:
            model.save_weights(os.path.join(a.workdir, "model.weights.h5"))
        if "checkpoint" in formats:
            root = Tree()
            for layer in model.layers:
                if layer.weights:
                    setattr(root, layer.name, layer)
            tf.train.Checkpoint(net=root).write(os.path.join(a.workdir, "ckpt", "model"))
    else:
        if a.formats != "checkpoint":
            raise SystemExit("pmrid is saved as a checkpoint of a module tree only")
        b = PMRIDBuilder()
        b.forward(tf.constant(x))  # builds the layers
        randomise_biases(b.root.trainable_variables, a.seed)
        y = b.forward(tf.constant(x)).numpy()
        tf.train.Checkpoint(net=b.root).write(os.path.join(a.workdir, "ckpt", "model"))
    np.save(os.path.join(a.workdir, "output.npy"), y.transpose(0, 3, 1, 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
