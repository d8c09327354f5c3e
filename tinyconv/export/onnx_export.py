"""model.onnx: the folded inference graph, preprocessing inside, per-attribute outputs.

Graph (N is dynamic, H x W fixed to the model's input size)::

    image (N, H, W, 3) uint8 RGB  -> Cast float32 -> Div 255 -> Transpose to (N, 3, H, W)
      -> [Conv (BatchNorm folded) -> Relu -> MaxPool] x blocks -> GlobalAveragePool -> Flatten
      -> Gemm -> logits (N, K) -> Sigmoid -> probabilities (N, K)
      -> Gather(column k) -> one (N,) output per attribute, named after it ("Eyeglasses", ...)

Opset 17 with IR version 8 set explicitly: onnx 1.23 would stamp IR 14, which onnxruntime-web 1.30
refuses (it reads IR <= 13). Division by 255 (not multiplication by 1/255) matches the training
pipeline's ``uint8 / 255`` bit for bit.
"""
import json

import numpy as np

OPSET = 17
IR_VERSION = 8
INPUT_NAME = "image"
PROBS_NAME = "probabilities"
LOGITS_NAME = "logits"
INPUT_FORMAT = ("uint8 RGB, NHWC (N, H, W, 3), values 0-255, already resized by the resize policy; "
                "the graph divides by 255 and transposes to NCHW itself")


def output_name(attribute):
    """The output name for one attribute: the name itself when it is an identifier ("Eyeglasses"),
    else prefixed ("5_o_Clock_Shadow" -> "attr_5_o_Clock_Shadow") so Core ML and Swift accept it too."""
    return attribute if attribute.isidentifier() else f"attr_{attribute}"


def metadata_props(meta):
    """The string -> string metadata both exporters write (see ``exporter.export_metadata``)."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def build_onnx(ops, attributes, image_size, metadata):
    """Folded ops -> onnx.ModelProto. image_size (H, W); attributes: K names in output order."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    H, W = image_size
    K = len(attributes)
    inits = [numpy_helper.from_array(np.array(255.0, np.float32), "c_255")]
    nodes = [helper.make_node("Cast", [INPUT_NAME], ["image_f"], to=TensorProto.FLOAT),
             helper.make_node("Div", ["image_f", "c_255"], ["image_01"]),
             helper.make_node("Transpose", ["image_01"], ["x_nchw"], perm=[0, 3, 1, 2])]
    x, n = "x_nchw", 0
    for op in ops:
        n += 1
        y = f"{op['op']}_{n}"
        if op["op"] == "conv":
            wn, bn = f"{op['name']}.w", f"{op['name']}.b"
            inits += [numpy_helper.from_array(op["w"], wn), numpy_helper.from_array(op["b"], bn)]
            (ph, pw), (kh, kw) = op["pad"], op["w"].shape[2:]
            nodes.append(helper.make_node("Conv", [x, wn, bn], [y], kernel_shape=[kh, kw],
                                          strides=list(op["stride"]), pads=[ph, pw, ph, pw],
                                          name=op["name"]))
        elif op["op"] == "relu":
            nodes.append(helper.make_node("Relu", [x], [y]))
        elif op["op"] == "maxpool":
            nodes.append(helper.make_node("MaxPool", [x], [y], kernel_shape=list(op["kernel"]),
                                          strides=list(op["stride"]), ceil_mode=0))
        elif op["op"] == "gap":
            nodes.append(helper.make_node("GlobalAveragePool", [x], [y + "_4d"]))
            nodes.append(helper.make_node("Flatten", [y + "_4d"], [y], axis=1))
        elif op["op"] == "flatten":
            nodes.append(helper.make_node("Flatten", [x], [y], axis=1))
        elif op["op"] == "dense":
            wn, bn = f"{op['name']}.w", f"{op['name']}.b"
            inits += [numpy_helper.from_array(op["w"], wn), numpy_helper.from_array(op["b"], bn)]
            y = LOGITS_NAME if op is ops[-1] else y
            nodes.append(helper.make_node("Gemm", [x, wn, bn], [y], name=op["name"]))  # x @ w + b
        x = y
    nodes.append(helper.make_node("Sigmoid", [LOGITS_NAME], [PROBS_NAME]))
    outputs = [helper.make_tensor_value_info(PROBS_NAME, TensorProto.FLOAT, ["N", K])]
    for k, attr in enumerate(attributes):
        idx = f"index_{k}"
        inits.append(numpy_helper.from_array(np.array(k, np.int64), idx))  # scalar index: (N, K) -> (N,)
        nodes.append(helper.make_node("Gather", [PROBS_NAME, idx], [output_name(attr)], axis=1))
        outputs.append(helper.make_tensor_value_info(output_name(attr), TensorProto.FLOAT, ["N"]))
    outputs[0].doc_string = f"sigmoid probabilities, columns in this order: {', '.join(attributes)}"
    for o, attr in zip(outputs[1:], attributes):
        o.doc_string = f"probability of {attr} (column {attributes.index(attr)} of {PROBS_NAME})"
    inp = helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["N", H, W, 3])
    inp.doc_string = INPUT_FORMAT
    graph = helper.make_graph(nodes, "tinyconv", [inp], outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="tinyconv", producer_version=str(metadata.get("tinyconv_version", "")))
    model.ir_version = IR_VERSION  # explicitly: see the module docstring
    model.doc_string = (f"tinyconv multi-label classifier ({', '.join(attributes)}). Input: {INPUT_FORMAT}. "
                        f"Resize policy: {metadata.get('resize_policy', '')}")
    onnx.helper.set_model_props(model, metadata_props(metadata))
    return model


def write_onnx(ops, attributes, image_size, metadata, path):
    """Build, check (full_check) and save model.onnx; returns the path."""
    import onnx
    model = build_onnx(ops, attributes, image_size, metadata)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def ort_session(path):
    """An onnxruntime InferenceSession on the CPU, telemetry off (nothing written to the home folder)."""
    import os
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # must be set before onnxruntime is imported
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
