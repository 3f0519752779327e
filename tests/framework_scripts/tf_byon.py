"""Build the "bring your own network" TensorFlow/Keras models with random weights, save them
natively and run them on the test's inputs.

    python tf_byon.py WORKDIR [--seed S]

Reads WORKDIR/{rgb,mosaic,gray}_in.npy and WORKDIR/gray_noise.npy (NHWC float32 network inputs)
and writes, per network, its saved form and TF's output WORKDIR/NAME_out.npy (NHWC):
  rgb     3 -> 3, BatchNorm, sigmoid gate, space_to_depth/depth_to_space (a custom layer over tf.nn),
          strided conv + Conv2DTranspose, global residual      -> rgb_sm/ (model.export), and
          rgb_custom.keras (the same network: its custom layer makes safe loading refuse it)
  mosaic  1 -> 1 CFA frame, strided convs down to 1/4 and transposed convs back, built on a fixed
          64 x 64 input                                         -> mosaic.keras
  gray    1 -> 1 grayscale with a second input, the noise-level map, concatenated
                                                                -> gray_sm/ (model.export)
Runs in its own process (TF never shares one with paddle, and the test process stays light).
"""

import argparse
import os
import sys

import numpy as np
import tensorflow as tf
import keras
from keras import layers as L


@keras.saving.register_keras_serializable(package="byon")
class SpaceDepth(L.Layer):
    """tf.nn.space_to_depth (block > 0) or depth_to_space (block < 0) as a layer."""

    def __init__(self, block, **kwargs):
        super().__init__(**kwargs)
        self.block = block

    def call(self, x):
        if self.block > 0:
            return tf.nn.space_to_depth(x, self.block)
        return tf.nn.depth_to_space(x, -self.block)

    def get_config(self):
        return {**super().get_config(), "block": self.block}


def build_rgb():
    inp = keras.Input((None, None, 3), name="image")
    x = L.Conv2D(16, 3, padding="same")(inp)
    x = L.ReLU()(L.BatchNormalization()(x))
    x = L.Multiply()([x, L.Conv2D(16, 1, activation="sigmoid")(x)])            # sigmoid gate
    d = L.Conv2D(32, 3, padding="same", activation="relu")(SpaceDepth(2)(x))   # 64 ch at 1/2
    d = SpaceDepth(-2)(L.Conv2D(64, 3, padding="same")(d))                     # 16 ch at full size
    t = L.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    t = L.Conv2DTranspose(16, 3, strides=2, padding="same")(t)
    x = L.Concatenate()([d, t, x])
    x = L.BatchNormalization()(L.Conv2D(16, 3, padding="same", activation="relu")(x))
    return keras.Model(inp, L.Add()([inp, L.Conv2D(3, 3, padding="same")(x)]))


def build_mosaic():
    inp = keras.Input((64, 64, 1), name="mosaic")
    s1 = L.Conv2D(16, 2, strides=2, activation="relu")(inp)                   # one pixel per 2x2 block
    s2 = L.Conv2D(32, 3, strides=2, padding="same", activation="relu")(s1)
    s2 = L.Conv2D(32, 3, padding="same", activation="relu")(s2)
    u1 = L.Add()([L.Conv2DTranspose(16, 2, strides=2)(s2), s1])
    u1 = L.Conv2D(16, 3, padding="same", activation="relu")(u1)
    return keras.Model(inp, L.Add()([inp, L.Conv2DTranspose(1, 2, strides=2)(u1)]))


def build_gray():
    img = keras.Input((None, None, 1), name="image")
    sigma = keras.Input((None, None, 1), name="noise_sigma")
    x = L.Concatenate()([img, sigma])
    x = L.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = L.Conv2D(16, 3, padding="same", dilation_rate=2, activation="relu")(x)
    x = L.Conv2D(1, 3, padding="same")(x)
    return keras.Model([img, sigma], L.Subtract()([img, x]))


def randomise(model, rng):
    """Random biases and BatchNorm statistics, so every parameter matters."""
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            c = layer.moving_mean.shape
            layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.2, c).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.5, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.3, 2.0, c).astype("float32"))
        elif getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0, 0.05, layer.bias.shape).astype("float32"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("workdir")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    keras.utils.set_random_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    w = a.workdir

    def load(name):
        return np.load(os.path.join(w, name))

    rgb = build_rgb()
    randomise(rgb, rng)
    np.save(os.path.join(w, "rgb_out.npy"), rgb(load("rgb_in.npy"), training=False).numpy())
    rgb.export(os.path.join(w, "rgb_sm"), verbose=False)
    rgb.save(os.path.join(w, "rgb_custom.keras"))

    mosaic = build_mosaic()
    randomise(mosaic, rng)
    mosaic.save(os.path.join(w, "mosaic.keras"))
    # the model is built for 64 x 64; TF runs the test frame's size through a traced graph
    run = tf.function(lambda t: mosaic(t, training=False), input_signature=[tf.TensorSpec((None, None, None, 1))])
    np.save(os.path.join(w, "mosaic_out.npy"), run(load("mosaic_in.npy")).numpy())

    gray = build_gray()
    randomise(gray, rng)
    y = gray([load("gray_in.npy"), load("gray_noise.npy")], training=False)
    np.save(os.path.join(w, "gray_out.npy"), y.numpy())
    gray.export(os.path.join(w, "gray_sm"), verbose=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
