"""tensorflow-gan's KID and FID on given activations: the reference for tests/test_metrics.py.

Runs under the TensorFlow environment (``DDSS_TF_PYTHON``, made by ``make tfenv``), not
under the library's: it imports neither jax nor ddss_lite, and needs no internet.

    python tests/tf_reference.py ACTIVATIONS.npz RESULTS.json

``ACTIVATIONS.npz`` holds, for each case ``c``: ``c__real`` and ``c__gen`` (float32,
shape (rows, d); row counts may differ) and ``c__max_block_sizes`` (int). For each case
and for inputs given as ``tf.constant`` of float32 and of float64, the script records

- ``kernel_classifier_distance_and_std_from_activations(real, gen, max_block_size=b)``
  -> ``[kid, std]`` for every ``b`` (the default cubic kernel), and
- ``frechet_classifier_distance_from_activations(real, gen)``,

and writes ``{"versions": {...}, "cases": {c: {"kid": {dtype: {b: [kid, std]}},
"fid": {dtype: fid}}}}`` as JSON (NaN written as ``NaN``).
"""
import json
import os
import sys
from importlib import metadata

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_gan as tfgan  # noqa: E402


def reference(real, gen, max_block_sizes):
    out = {"kid": {}, "fid": {}}
    for dtype in (np.float32, np.float64):
        r = tf.constant(real.astype(dtype))
        g = tf.constant(gen.astype(dtype))
        name = np.dtype(dtype).name
        out["fid"][name] = float(tfgan.eval.frechet_classifier_distance_from_activations(r, g))
        out["kid"][name] = {}
        for b in max_block_sizes:
            mean, std = tfgan.eval.kernel_classifier_distance_and_std_from_activations(r, g, max_block_size=int(b))
            out["kid"][name][str(int(b))] = [float(mean), float(std)]
    return out


def main(argv):
    if len(argv) != 3:
        sys.exit(f"usage: {argv[0]} ACTIVATIONS.npz RESULTS.json")
    src, dst = argv[1], argv[2]
    results = {"versions": {"tensorflow": tf.__version__, "numpy": np.__version__,
                            "tensorflow_gan": metadata.version("tensorflow-gan")},
               "cases": {}}
    with np.load(src, allow_pickle=False) as data:
        cases = sorted({key.rsplit("__", 1)[0] for key in data.files})
        for case in cases:
            results["cases"][case] = reference(data[f"{case}__real"], data[f"{case}__gen"],
                                               data[f"{case}__max_block_sizes"])
    tmp = dst + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, dst)


if __name__ == "__main__":
    main(sys.argv)
