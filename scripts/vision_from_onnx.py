"""Turns the DINOv2 backbone of an ONNX export (PyTorch's exporter, transformers' Dinov2Model inside) into a Hugging
Face folder: config.json, model.safetensors with transformers' Dinov2Model names, preprocessor_config.json.

Python's standard library only (a user's machine needs no onnx package): the ONNX protobuf is read with the small
wire-format reader below.

What the exporter did to the weights, and how it is undone:
- biases, norms, layer scales, the class token and the patch convolution keep transformers' names under a prefix
  (`backbone.` here): the prefix is dropped;
- the projection matrices are MatMul operands under generated names (`onnx::MatMul_1966`), stored [in, out]: each
  is named after the bias its product is added to (`...query.bias` -> `...query.weight`) and transposed to
  transformers' [out, in];
- the position embeddings were folded into two constants (the class position [1, 1, D] and the patch grid
  [1, N, D], read by the embeddings' Concat and Reshape): they are joined into `embeddings.position_embeddings`
  [1, N + 1, D], and image_size is set from the grid (sqrt(N) * patch size: 518 for a 37x37 grid of 14 px).
Nothing else of the graph (a decoder head, say) is kept.

usage: vision_from_onnx.py MODEL.onnx OUT_DIR [--prefix backbone.] [--mean 0.485,0.456,0.406]
       [--std 0.229,0.224,0.225] [--size 224]
       vision_from_onnx.py --add-output MODEL.onnx OUT.onnx   (the backbone's last hidden state as a second graph
                                                                output, for checking against ONNX Runtime)"""
import argparse
import array
import json
import math
import os
import struct
import sys


# --- protobuf wire format -------------------------------------------------------------------------------------

def varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def fields(buf):
    """(field number, wire type, value) of one message: ints for varints and fixed, memoryviews for bytes."""
    i, n = 0, len(buf)
    while i < n:
        key, i = varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = varint(buf, i)
        elif wt == 1:
            v, i = buf[i:i + 8], i + 8
        elif wt == 2:
            ln, i = varint(buf, i)
            v, i = buf[i:i + ln], i + ln
        elif wt == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wt} at byte {i}")
        yield num, wt, v


def enc_varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def enc_field(num, payload):
    return enc_varint(num << 3 | 2) + enc_varint(len(payload)) + payload


# --- ONNX messages ----------------------------------------------------------------------------------------------

FLOAT = 1


class Tensor:
    def __init__(self, buf):
        self.dims, self.dtype, self.name, self.raw, self.floats = [], 0, "", None, None
        for num, wt, v in fields(buf):
            if num == 1:
                if wt == 2:  # packed
                    j = 0
                    while j < len(v):
                        d, j = varint(v, j)
                        self.dims.append(d)
                else:
                    self.dims.append(v)
            elif num == 2:
                self.dtype = v
            elif num == 4:
                self.floats = bytes(v)
            elif num == 8:
                self.name = bytes(v).decode()
            elif num == 9:
                self.raw = bytes(v)
            elif num in (13, 14):
                raise ValueError(f"tensor {self.name or '?'}: external data is not supported")

    def values(self):
        if self.dtype != FLOAT:
            raise ValueError(f"tensor {self.name}: data type {self.dtype}, want float32 (1)")
        data = self.raw if self.raw is not None else self.floats
        a = array.array("f")
        a.frombytes(data)
        if sys.byteorder != "little":
            a.byteswap()
        if len(a) != math.prod(self.dims):
            raise ValueError(f"tensor {self.name}: {len(a)} values for dims {self.dims}")
        return a


class Node:
    def __init__(self, buf):
        self.inputs, self.outputs, self.name, self.op = [], [], "", ""
        for num, _, v in fields(buf):
            if num == 1:
                self.inputs.append(bytes(v).decode())
            elif num == 2:
                self.outputs.append(bytes(v).decode())
            elif num == 3:
                self.name = bytes(v).decode()
            elif num == 4:
                self.op = bytes(v).decode()


def read_graph(path):
    with open(path, "rb") as f:
        model = memoryview(f.read())
    graph = next((v for num, _, v in fields(model) if num == 7), None)
    if graph is None:
        raise ValueError(f"{path}: no graph (not an ONNX model?)")
    nodes, inits = [], {}
    for num, _, v in fields(graph):
        if num == 1:
            nodes.append(Node(v))
        elif num == 5:
            t = Tensor(v)
            inits[t.name] = t
    return model, nodes, inits


# --- the conversion ---------------------------------------------------------------------------------------------

def transpose(a, rows, cols):
    """[rows, cols] row-major -> [cols, rows]."""
    out = array.array("f")
    for c in range(cols):
        out.extend(a[c::cols])
    return out


def convert(onnx_path, prefix):
    _, nodes, inits = read_graph(onnx_path)
    consumers = {}
    for n in nodes:
        for i in n.inputs:
            consumers.setdefault(i, []).append(n)
    out = {}
    for name, t in inits.items():
        if name.startswith(prefix):
            out[name[len(prefix):]] = (t.dims, t.values())
    # MatMul operands: named by the bias added to their product
    for n in nodes:
        if n.op != "MatMul" or len(n.inputs) != 2 or n.inputs[1] not in inits:
            continue
        w = inits[n.inputs[1]]
        if w.name.startswith(prefix):
            continue
        bias = None
        for c in consumers.get(n.outputs[0], []):
            if c.op == "Add":
                bias = next((i for i in c.inputs if i.startswith(prefix) and i.endswith(".bias")), None)
        if bias is None:
            raise ValueError(f"{onnx_path}: MatMul {n.name}: no bias added to its product, cannot name {w.name}")
        rows, cols = w.dims
        key = bias[len(prefix):-len(".bias")] + ".weight"
        if key in out:
            raise ValueError(f"{onnx_path}: two matrices for {key}")
        out[key] = ([cols, rows], transpose(w.values(), rows, cols))
    # folded position embeddings
    d = out["embeddings.cls_token"][0][-1]
    emb = [n for n in nodes if n.name.startswith("/" + prefix.rstrip(".") + "/embeddings/")]
    cls_pos = grid = None
    for n in emb:
        for i in n.inputs:
            t = inits.get(i)
            if t is None or t.name.startswith(prefix):
                continue
            if n.op == "Concat" and t.dims == [1, 1, d]:
                cls_pos = t
            elif n.op == "Reshape" and len(t.dims) == 3 and t.dims[0] == 1 and t.dims[2] == d:
                grid = t
    if cls_pos is None or grid is None:
        raise ValueError(f"{onnx_path}: the folded position embeddings were not found in the embeddings' nodes")
    n_pos = grid.dims[1]
    side = math.isqrt(n_pos)
    if side * side != n_pos:
        raise ValueError(f"{onnx_path}: {n_pos} patch positions is not a square grid")
    pos = cls_pos.values()
    pos.extend(grid.values())
    out["embeddings.position_embeddings"] = ([1, n_pos + 1, d], pos)
    out["embeddings.mask_token"] = ([1, d], array.array("f", [0.0]) * d)  # unused without masking
    layers = 1 + max(int(k.split(".")[2]) for k in out if k.startswith("encoder.layer."))
    patch = out["embeddings.patch_embeddings.projection.weight"][0][-1]
    inter = out["encoder.layer.0.mlp.fc1.weight"][0][0]
    head_dim = 64 if d % 64 == 0 else d  # ViT-S/B/L/g: 64 per head
    config = {
        "architectures": ["Dinov2Model"],
        "model_type": "dinov2",
        "hidden_size": d,
        "num_hidden_layers": layers,
        "num_attention_heads": d // head_dim,
        "mlp_ratio": inter // d if inter % d == 0 else inter / d,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "image_size": side * patch,
        "patch_size": patch,
        "num_channels": out["embeddings.patch_embeddings.projection.weight"][0][1],
        "qkv_bias": True,
        "layerscale_value": 1.0,
        "use_swiglu_ffn": False,
        "torch_dtype": "float32",
    }
    return config, out


def write_safetensors(path, tensors):
    header, offset, blobs = {"__metadata__": {"format": "pt"}}, 0, []
    for name in sorted(tensors):
        dims, a = tensors[name]
        b = a.tobytes() if sys.byteorder == "little" else _swapped(a)
        header[name] = {"dtype": "F32", "shape": dims, "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _swapped(a):
    c = array.array("f", a)
    c.byteswap()
    return c.tobytes()


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def add_output(src, dst, prefix="backbone."):
    """Copies the model with the output of the backbone's final norm as a second graph output."""
    model, nodes, _ = read_graph(src)
    last = None
    for n in nodes:
        if n.op == "Add" and f"{prefix}layernorm.bias" in n.inputs:
            last = n.outputs[0]
    if last is None:
        raise ValueError(f"{src}: no Add of {prefix}layernorm.bias")
    # rebuild the model message with the graph (field 7) extended by one output (graph field 12)
    i, buf, out = 0, model, bytearray()
    while i < len(buf):
        start = i
        key, i = varint(buf, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            _, i = varint(buf, i)
        elif wt == 1:
            i += 8
        elif wt == 5:
            i += 4
        else:
            ln, j = varint(buf, i)
            i = j + ln
            if num == 7:
                graph = bytes(buf[j:i]) + enc_field(12, enc_field(1, last.encode()))
                out += enc_field(7, graph)
                continue
        out += buf[start:i]
    with open(dst + ".tmp", "wb") as f:
        f.write(out)
    os.replace(dst + ".tmp", dst)
    return last


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--prefix", default="backbone.")
    ap.add_argument("--mean", default="0.485,0.456,0.406")
    ap.add_argument("--std", default="0.229,0.224,0.225")
    ap.add_argument("--size", type=int, default=224, help="the side the model is run at (its processor's crop)")
    ap.add_argument("--add-output", action="store_true")
    a = ap.parse_args()
    if a.add_output:
        print(add_output(a.model, a.out, a.prefix))
        return
    config, tensors = convert(a.model, a.prefix)
    os.makedirs(a.out, exist_ok=True)
    write_safetensors(os.path.join(a.out, "model.safetensors"), tensors)
    mean = [float(x) for x in a.mean.split(",")]
    std = [float(x) for x in a.std.split(",")]
    write_json(os.path.join(a.out, "preprocessor_config.json"), {
        "image_processor_type": "BitImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": a.size},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": a.size, "width": a.size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": mean,
        "image_std": std,
        "do_convert_rgb": True,
    })
    write_json(os.path.join(a.out, "config.json"), config)
    print(f"{a.out}: {len(tensors)} tensors, {config['num_hidden_layers']} layers of {config['hidden_size']}, "
          f"positions for {config['image_size']} px", file=sys.stderr)


if __name__ == "__main__":
    main()
