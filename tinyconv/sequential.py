"""A stack of layers run in order, with a Keras-like summary and state dicts."""
import numpy as np

from .backend import device_of, get_array_module, to_cpu
from .fusion import plan


class Sequential:
    """forward runs the layers in order, backward in reverse; each layer keeps its own cache.

    The layers run as the steps of their fusion plan (tinyconv/fusion.py): a BatchNorm2D -> ReLU
    (-> MaxPool2D) is one fused op, the same function in fewer passes; ``model.layers`` stays the
    list of layers. Layers are named Keras-style by type ("conv2d", "conv2d_1", ...) unless already
    named; the names key ``state_dict()``: "<layer>.<param or buffer>" -> NumPy array.
    """

    def __init__(self, layers, name="sequential", input_shape=None):
        self.layers = list(layers)
        self.name = name
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.steps = None                    # the plan of the last forward, walked back by backward
        seen = {}
        for layer in self.layers:
            base = layer.name or type(layer).__name__.lower()
            n = seen.get(base, 0)
            seen[base] = n + 1
            layer.name = base if n == 0 else f"{base}_{n}"

    def plan(self):
        """The steps a forward runs now: layers, and fused steps (tinyconv/fusion.py)."""
        return plan(self.layers)

    def forward(self, x, train=True):
        self.steps = None                    # the last forward's saved states go now, not at the end
        steps = self.plan()
        for step in steps:
            x = step.forward(x, train)
        self.steps = steps
        return x

    __call__ = forward

    def backward(self, dy, accumulate=False):
        """dy back through the last forward's steps; each writes its gradients into its layers'
        ``grads`` (``accumulate=True``: adds to them, as micro-batches of one step do)."""
        if self.steps is None:
            raise RuntimeError("Sequential.backward called without a forward before it")
        for step in reversed(self.steps):
            dy = step.backward(dy, accumulate=True) if accumulate else step.backward(dy)
        return dy

    def predict_proba(self, x):
        """Per-attribute probabilities sigmoid(logits), inference mode."""
        from .losses import sigmoid
        return sigmoid(self.forward(x, train=False))

    def parameters(self):
        """[(params, grads), ...], one pair per layer that has parameters (what optimizers take)."""
        return [(layer.params, layer.grads) for layer in self.layers if layer.params]

    def num_params(self):
        return sum(layer.num_params() for layer in self.layers)

    def num_buffer_values(self):
        return sum(int(b.size) for layer in self.layers for b in layer.buffers.values())

    @property
    def device(self):
        for layer in self.layers:
            for p in layer.params.values():
                return device_of(p)
        return "cpu"

    @property
    def dtype(self):
        for layer in self.layers:
            for p in layer.params.values():
                return p.dtype
        return np.dtype(np.float32)

    def to(self, device):
        for layer in self.layers:
            layer.to(device)
        return self

    def astype(self, dtype):
        for layer in self.layers:
            layer.astype(dtype)
        return self

    def clear_cache(self):
        self.steps = None
        for layer in self.layers:
            layer.clear_cache()

    def summary(self, input_shape=None, print_fn=print):
        """Print (and return) a table of layers, output shapes and parameter counts."""
        shape = tuple(input_shape) if input_shape is not None else self.input_shape
        if shape is None:
            raise ValueError("summary() needs the input shape, and this model was built without one: call "
                             "model.summary(input_shape=(3, 54, 44)) with your (C, H, W), or build it as "
                             "Sequential([...], input_shape=(3, 54, 44))")
        rows = [("Layer (type)", "Output shape", "Param #")]
        rows.append(("input", str(("N",) + shape).replace("'", ""), "0"))
        for layer in self.layers:
            shape = layer.output_shape(shape)
            rows.append((f"{layer.name} ({type(layer).__name__})", str(("N",) + shape).replace("'", ""),
                         f"{layer.num_params():,}"))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        line = "-" * (sum(widths) + 6)
        fmt = lambda r: f"{r[0]:<{widths[0]}}   {r[1]:<{widths[1]}}   {r[2]:>{widths[2]}}"
        trainable, frozen = self.num_params(), self.num_buffer_values()
        out = [f'Model: "{self.name}"', line, fmt(rows[0]), line.replace("-", "=")]
        out += [fmt(r) for r in rows[1:]]
        out += [line.replace("-", "="),
                f"Total params: {trainable + frozen:,}",
                f"Trainable params: {trainable:,}",
                f"Non-trainable params: {frozen:,} (BatchNorm running statistics)",
                line]
        text = "\n".join(out)
        if print_fn is not None:
            print_fn(text)
        return text

    def state_dict(self):
        """{"<layer>.<name>": NumPy array} for every parameter and buffer (copies, on the CPU)."""
        state = {}
        for layer in self.layers:
            for d in (layer.params, layer.buffers):
                for k, v in d.items():
                    state[f"{layer.name}.{k}"] = to_cpu(v).copy()
        return state

    def load_state_dict(self, state, strict=True):
        """Copy arrays into the model's own (in place: device and dtype stay the model's)."""
        expected = {}
        for layer in self.layers:
            for d in (layer.params, layer.buffers):
                for k in d:
                    expected[f"{layer.name}.{k}"] = (d, k)
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if strict and (missing or unexpected):
            raise ValueError(f"state dict does not fit model '{self.name}': missing {missing}, unexpected {unexpected}")
        for key, (d, k) in expected.items():
            if key not in state:
                continue
            value = state[key]
            if tuple(value.shape) != tuple(d[k].shape):
                raise ValueError(f"state dict entry '{key}' has shape {tuple(value.shape)}, "
                                 f"the model expects {tuple(d[k].shape)}")
            xp = get_array_module(d[k])
            d[k][...] = xp.asarray(value, dtype=d[k].dtype)

    def __repr__(self):
        inner = "\n".join(f"  ({layer.name}) {layer!r}" for layer in self.layers)
        return f"Sequential(\n{inner}\n)"
