"""TensorFlow-Keras training step of the models `collab bench train` times, for the side-by-side
comparison in `benches/vs_tensorflow.sh`.

The Keras models are the same architectures as burn-collab's (`crates/models`): DS-CNN-L as
published by ARM (conv 10x4 stride (2,1) with bias + BatchNorm + ReLU, five depthwise-separable
blocks, global average pool, dense) on 49x10x1 MFCCs, and MobileNet v1 for CIFAR (3x3 stem
stride 1, thirteen depthwise-separable blocks without biases, BatchNorm + ReLU6, global average
pool, dense) on 32x32x3 images. One step is forward + backward + Adam (lr 1e-4) on one fixed
random batch with sparse cross-entropy on logits, BatchNorm in training mode (batch
statistics), exactly what `collab bench train --bn batch` times.

    python benches/tf_keras_step.py --model ds-cnn-l --batch-size 100 --steps 20 --json

Prints `{"median_ms", "min_ms", "steps", "backend", "what"}` like `collab bench train --json`.
"""

import argparse
import json
import os
import statistics
import time


def ds_cnn_l(keras):
    layers = keras.layers
    x = inp = keras.Input((49, 10, 1))

    def bn_relu(x):
        x = layers.BatchNormalization(epsilon=1e-3, momentum=0.9)(x)
        return layers.ReLU()(x)

    x = bn_relu(layers.Conv2D(276, (10, 4), strides=(2, 1), padding="same")(x))
    for stride in [(2, 2), (1, 1), (1, 1), (1, 1), (1, 1)]:
        x = bn_relu(layers.DepthwiseConv2D((3, 3), strides=stride, padding="same")(x))
        x = bn_relu(layers.Conv2D(276, (1, 1), padding="same")(x))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, layers.Dense(12)(x)), (49, 10, 1), 12


def mobilenet_v1_cifar(keras, width=1.0):
    layers = keras.layers
    blocks = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)]
    blocks += [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    x = inp = keras.Input((32, 32, 3))

    def bn_relu6(x):
        x = layers.BatchNormalization(epsilon=1e-3, momentum=0.9)(x)
        return layers.ReLU(max_value=6.0)(x)

    c = lambda n: max(8, int(n * width))  # noqa: E731
    x = bn_relu6(layers.Conv2D(c(32), 3, padding="same", use_bias=False)(x))
    for out, stride in blocks:
        x = bn_relu6(layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(x))
        x = bn_relu6(layers.Conv2D(c(out), 1, use_bias=False)(x))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, layers.Dense(10)(x)), (32, 32, 3), 10


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ds-cnn-l", choices=["ds-cnn-l", "mobilenet-v1-cifar"])
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: TF's default)")
    p.add_argument("--xla", action="store_true", help="jit_compile=True")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    if a.threads:
        tf.config.threading.set_intra_op_parallelism_threads(a.threads)
    keras = tf.keras
    tf.random.set_seed(0)
    build = ds_cnn_l if a.model == "ds-cnn-l" else mobilenet_v1_cifar
    model, shape, classes = build(keras)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=a.xla,
    )
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((a.batch_size, *shape), dtype=np.float32))
    y = tf.constant(np.arange(a.batch_size) % classes)
    times = []
    for i in range(a.steps + 2):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        if i >= 2:
            times.append((time.perf_counter() - start) * 1e3)
    out = {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "steps": a.steps,
        "backend": f"tensorflow {tf.__version__} keras{' xla' if a.xla else ''}",
        "what": f"{a.model} train step, batch {a.batch_size}, BatchNorm batch, one random batch",
    }
    if a.json:
        print(json.dumps(out))
    else:
        print(f"{out['what']}: median {out['median_ms']:.1f} ms, min {out['min_ms']:.1f} ms ({out['backend']})")


if __name__ == "__main__":
    main()
