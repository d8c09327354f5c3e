"""Read a saved Core ML program back and run it with NumPy (Core ML itself only predicts on macOS).

:func:`describe` returns what an app sees (input image size and colour space, the image
preprocessing scale and bias as they appear in the program, outputs, metadata).
:func:`evaluate` interprets the program's operations on its stored weights: the handful of MIL ops
the exporter emits (const, mul, add, cast, conv, relu, max_pool, reduce_mean, linear, sigmoid,
slice_by_index, squeeze, reshape). An op whose declared output type is float16 has its result
rounded to float16, as a float16 program stores it; sums accumulate in float64 (the device
accumulates in at least fp32), so the float16 bound documents storage rounding, not a worst case.
"""
import os

import numpy as np

from .coreml_export import import_coremltools

_DTYPES = {"FLOAT16": np.float16, "FLOAT32": np.float32, "FLOAT64": np.float64, "INT32": np.int32,
           "INT64": np.int64, "INT8": np.int8, "UINT8": np.uint8, "BOOL": np.bool_}


class CoreMLProgram:
    """A saved .mlpackage read back with coremltools (``skip_model_load=True``: works on Linux)."""

    def __init__(self, path):
        ct = import_coremltools()
        from coremltools.libmilstoragepython import _BlobStorageReader
        from coremltools.proto import MIL_pb2
        self.path = str(path)
        self.mlmodel = ct.models.MLModel(self.path, skip_model_load=True)
        self.spec = self.mlmodel.get_spec()
        if self.spec.WhichOneof("Type") != "mlProgram":
            raise ValueError(f"{path}: not a Core ML program (type {self.spec.WhichOneof('Type')})")
        self._dtype_name = MIL_pb2.DataType.Name
        self._weights = _BlobStorageReader(os.path.join(self.mlmodel.weights_dir, "weight.bin")) \
            if os.path.exists(os.path.join(self.mlmodel.weights_dir, "weight.bin")) else None
        fn = self.spec.mlProgram.functions["main"]
        self.block = fn.block_specializations[fn.opset]
        self.input_names = [i.name for i in fn.inputs]

    # -- reading values -------------------------------------------------------------------------
    def _value(self, value):
        """A MIL Value proto (immediate or in weight.bin) -> NumPy array (or str / list of str)."""
        ttype = value.type.tensorType
        dtype_name = self._dtype_name(ttype.dataType)
        shape = [d.constant.size for d in ttype.dimensions]
        if value.HasField("blobFileValue"):
            off = value.blobFileValue.offset
            read = {"FLOAT32": self._weights.read_float_data, "FLOAT16": self._weights.read_fp16_data}[dtype_name]
            a = np.asarray(read(off))
            if dtype_name == "FLOAT16":
                a = a.view(np.float16) if a.dtype == np.uint16 else a.astype(np.float16)
            return a.reshape(shape)
        t = value.immediateValue.tensor
        kind = t.WhichOneof("value")
        if kind == "strings":
            vals = list(t.strings.values)
            return vals[0] if not shape and len(vals) == 1 else vals
        if kind == "bytes":
            a = np.frombuffer(t.bytes.values, dtype=_DTYPES[dtype_name])
        else:
            a = np.asarray(list(getattr(t, kind).values), dtype=_DTYPES[dtype_name])
        return a.reshape(shape) if shape else a.reshape(())

    def _arg(self, env, op, key, default=None):
        if key not in op.inputs:
            return default
        binding = op.inputs[key].arguments[0]
        return env[binding.name] if binding.WhichOneof("binding") == "name" else self._value(binding.value)

    # -- what an app sees -----------------------------------------------------------------------
    def describe(self):
        """{"input": {name, width, height, color_space}, "scale", "bias", "outputs": {name: shape},
        "output_descriptions", "metadata", "author", "license", "short_description"}."""
        d = self.spec.description
        inp = d.input[0]
        img = inp.type.imageType
        from coremltools.proto import FeatureTypes_pb2
        color = FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(img.colorSpace)
        scale, bias = 1.0, 0.0
        consts = self._consts()
        # The ImageType preprocessing is compiled into the program as mul(image, scale) [+ add(bias)].
        for op in self.block.operations:
            names = {k: v.arguments[0].name for k, v in op.inputs.items()}
            if op.type == "mul" and names.get("x") == inp.name:
                scale = float(consts[names["y"]])
                scaled = op.outputs[0].name
                for op2 in self.block.operations:
                    n2 = {k: v.arguments[0].name for k, v in op2.inputs.items()}
                    if op2.type == "add" and n2.get("x") == scaled:
                        bias = np.asarray(consts[n2["y"]]).tolist()
        outputs = {o.name: tuple(o.type.multiArrayType.shape) for o in d.output}
        return {"input": {"name": inp.name, "width": img.width, "height": img.height, "color_space": color,
                          "description": inp.shortDescription},
                "scale": scale, "bias": bias, "outputs": outputs,
                "output_descriptions": {o.name: o.shortDescription for o in d.output},
                "metadata": dict(d.metadata.userDefined), "author": d.metadata.author,
                "license": d.metadata.license, "short_description": d.metadata.shortDescription}

    def _consts(self):
        return {op.outputs[0].name: self._value(op.attributes["val"])
                for op in self.block.operations if op.type == "const"}

    # -- running it ------------------------------------------------------------------------------
    def evaluate(self, images):
        """uint8 images (N, H, W, 3) RGB -> {output name: array with a leading N axis}.

        Core ML feeds an RGB image input as float pixels 0-255 in (1, 3, H, W); the program
        then applies its own preprocessing, so the scale is exercised here too.
        """
        images = np.asarray(images)
        results = {}
        for img in images:
            x = img.transpose(2, 0, 1)[None].astype(np.float32)
            out = self._run({self.input_names[0]: x})
            for k, v in out.items():
                results.setdefault(k, []).append(v[0])
        return {k: np.stack(v) for k, v in results.items()}

    def _run(self, feeds):
        env = dict(feeds)
        for op in self.block.operations:
            out = op.outputs[0]
            if op.type == "const":
                env[out.name] = self._value(op.attributes["val"])
                continue
            a = lambda key, default=None: self._arg(env, op, key, default)  # noqa: E731
            y = _OPS[op.type](a) if op.type in _OPS else None
            if y is None:
                raise NotImplementedError(f"{self.path}: the interpreter has no op {op.type!r}")
            dtype = _DTYPES.get(self._dtype_name(out.type.tensorType.dataType), np.float32)
            env[out.name] = np.asarray(y).astype(dtype)  # float16 outputs: rounded as stored
        return {name: np.asarray(env[name], dtype=np.float64) for name in self.block.outputs}


def _conv(a):
    x, w = a("x").astype(np.float64), a("weight").astype(np.float64)
    b = a("bias")
    if int(a("groups", 1)) != 1 or any(int(d) != 1 for d in a("dilations", [1, 1])):
        raise NotImplementedError("conv with groups or dilations")
    sh, sw = (int(s) for s in a("strides", [1, 1]))
    pad_type = str(a("pad_type", "valid"))
    t, bo, l, r = (int(p) for p in a("pad", [0, 0, 0, 0])) if pad_type == "custom" else (0, 0, 0, 0)
    if pad_type not in ("custom", "valid"):
        raise NotImplementedError(f"conv pad_type {pad_type}")
    O, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (t, bo), (l, r)))
    out_h, out_w = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
    y = np.zeros((x.shape[0], O, out_h, out_w))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw]
            y += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return y + (0 if b is None else b.astype(np.float64)[:, None, None])


def _max_pool(a):
    x = a("x")
    if str(a("pad_type", "valid")) != "valid" or bool(a("ceil_mode", False)):
        raise NotImplementedError("max_pool other than valid padding, floor mode")
    kh, kw = (int(k) for k in a("kernel_sizes"))
    sh, sw = (int(s) for s in a("strides"))
    out_h, out_w = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
    y = np.full(x.shape[:2] + (out_h, out_w), -np.inf)
    for i in range(kh):
        for j in range(kw):
            y = np.maximum(y, x[:, :, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw])
    return y


def _slice_by_index(a):
    x = a("x")
    begin, end = [int(v) for v in a("begin")], [int(v) for v in a("end")]
    stride = [int(v) for v in a("stride", [1] * x.ndim)]
    bmask = list(a("begin_mask", [False] * x.ndim))
    emask = list(a("end_mask", [False] * x.ndim))
    smask = list(a("squeeze_mask", [False] * x.ndim))
    idx = tuple(slice(None if bm else b, None if em else e, s)
                for b, e, s, bm, em in zip(begin, end, stride, bmask, emask))
    y = x[idx]
    return y.squeeze(axis=tuple(i for i, s in enumerate(smask) if s)) if any(smask) else y


def _reduce_mean(a):
    x = a("x").astype(np.float64)
    return x.mean(axis=tuple(int(v) for v in a("axes")), keepdims=bool(a("keep_dims", False)))


def _sigmoid(a):
    x = a("x").astype(np.float64)
    return 1 / (1 + np.exp(-x))


_OPS = {
    "mul": lambda a: a("x").astype(np.float64) * a("y").astype(np.float64),
    "add": lambda a: a("x").astype(np.float64) + a("y").astype(np.float64),
    "cast": lambda a: a("x"),  # the output dtype (declared in the program) is applied by _run
    "conv": _conv,
    "relu": lambda a: np.maximum(a("x"), 0),
    "max_pool": _max_pool,
    "reduce_mean": _reduce_mean,
    "linear": lambda a: a("x").astype(np.float64) @ a("weight").astype(np.float64).T
    + (0 if a("bias") is None else a("bias").astype(np.float64)),
    "sigmoid": _sigmoid,
    "slice_by_index": _slice_by_index,
    "squeeze": lambda a: np.squeeze(a("x"), axis=tuple(int(v) for v in a("axes"))),
    "reshape": lambda a: a("x").reshape([int(v) for v in a("shape")]),
}
