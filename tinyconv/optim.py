"""Optimizers: Adam (Kingma & Ba 2015) and SGD with momentum, updating parameters in place.

Both take the list of ``(params, grads)`` dict pairs that ``Sequential.parameters()`` returns and
read ``grads`` at each ``step()``. Adam's update is an op (tinyconv/ops/optim.py), run by its
reference, numba or CUDA implementation as tinyconv.ops chooses.

Who owns the memory of parameters and gradients: the arrays in the layers' ``params`` and
``grads`` dicts, which a backward writes into (tinyconv/ops/grads.py) rather than replacing.
The CUDA Adam wants one flat buffer per quantity (one launch updates every parameter), so for it
the optimizer takes that memory over, explicitly: :class:`FlatBuffers` moves the parameters, the
gradients, m and v into four flat buffers that the optimizer owns (``Adam.flat``) and puts views
of them back in the dicts. Layers read and write the same memory as before, backward fills the
flat gradient buffer in place and micro-batches accumulate into it (training.py), so nothing is
copied; a gradient array that something else put in ``grads`` is copied in. Data-parallel
training (tinyconv/distributed.py) asks any optimizer for the same thing with
:meth:`Optimizer.flat_gradients`: one buffer holding every gradient, for one allreduce per step.
"""
import numpy as np

from . import ops
from .backend import device_of, get_array_module, to_cpu, to_device


class Optimizer:
    def __init__(self, parameters, lr):
        self.parameters = list(parameters)
        self.lr = lr
        self.t = 0
        self.flat = None                # FlatBuffers, when the update wants them (CUDA) or keep_flat
        self.keep_flat = False          # set by flat_gradients(): always keep the flat buffers

    def flat_gradients(self):
        """The one flat buffer that holds every parameter's gradient (views of it sit in the layers'
        ``grads``, so a backward writes straight into it), for one allreduce per step
        (tinyconv/distributed.py). From now on the optimizer keeps its state in flat buffers
        (:class:`FlatBuffers`). Call it again after anything that replaces arrays (``load_state_dict``,
        ``model.to``): it returns the current buffer."""
        self.keep_flat = True
        for params, grads in self.parameters:
            for k, p in params.items():
                if k not in grads:
                    grads[k] = get_array_module(p).zeros_like(p)
        return self._flat(list(self._pairs()))[1][0]

    def _flat(self, pairs):
        if self.flat is None or not self.flat.matches(self, pairs):
            self.flat = FlatBuffers(self, pairs)
        self.flat.gather_grads(self, pairs)
        return [self.flat.p], [self.flat.g], list(self.flat.slot.values())

    def _slots(self):
        """Per-parameter state arrays, as {slot name: [dict per layer]}."""
        return {}

    def _zeros(self):
        return [{k: get_array_module(p).zeros_like(p) for k, p in params.items()} for params, _ in self.parameters]

    def _pairs(self):
        """Yield (param, grad, index, key) for every parameter array."""
        for i, (params, grads) in enumerate(self.parameters):
            for k, p in params.items():
                if k not in grads:
                    raise RuntimeError(f"no gradient for parameter {k!r} of layer {i}: call backward() before step()")
                yield p, grads[k], i, k

    def state_dict(self):
        """Hyper-parameters, step count and slot arrays (as NumPy), for checkpoints."""
        state = {"t": self.t, "lr": self.lr, "hyper": self.hyper()}
        for slot, arrays in self._slots().items():
            state[slot] = {str(i): to_cpu(d) for i, d in enumerate(arrays)}
        return state

    def load_state_dict(self, state):
        self.t, self.lr = int(state["t"]), float(state["lr"])
        for slot, arrays in self._slots().items():
            saved = state[slot]
            if len(saved) != len(arrays):
                raise ValueError(f"optimizer state has {len(saved)} layers of '{slot}', the model has {len(arrays)}")
            for i, d in enumerate(arrays):
                for k, a in d.items():
                    v = saved[str(i)][k]
                    if tuple(v.shape) != tuple(a.shape):
                        raise ValueError(f"optimizer '{slot}' for layer {i}.{k}: shape {v.shape} != {a.shape}")
                    d[k] = to_device(v.astype(a.dtype), device_of(a))

    def to(self, device):
        for arrays in self._slots().values():
            for d in arrays:
                for k in d:
                    d[k] = to_device(d[k], device)
        return self

    def hyper(self):
        return {}


ALIGN = 64      # elements: each parameter's view in a flat buffer starts at a multiple of this


def address(a):
    """The memory address of an array's first element (NumPy or CuPy)."""
    return a.data.ptr if hasattr(a.data, "ptr") else a.__array_interface__["data"][0]


def _aligned_zeros(xp, n, dtype):
    """n zeros whose first element sits at a multiple of ALIGN elements in memory (NumPy's allocator
    only promises 16 bytes)."""
    itemsize = np.dtype(dtype).itemsize
    raw = xp.zeros(n + ALIGN, dtype=dtype)
    skip = (-address(raw) // itemsize) % ALIGN
    return raw[skip:skip + n]


class FlatBuffers:
    """The parameters, gradients and per-parameter state (Adam's m and v, SGD's momentum buffer) of
    an optimizer in flat buffers it owns (``p``, ``g``, and ``slot[name]``), the dicts holding views
    into them. Each view starts at an address that is a multiple of :data:`ALIGN` elements (256 bytes
    in float32: the buffers are aligned, and each view's offset in them is a multiple of ALIGN), so
    odd channel counts (``--width``) leave no parameter misaligned for vector loads; the gaps are
    zeros and stay zeros (a zero gradient moves neither Adam nor SGD). Checked by identity at each
    step: when anything replaced an array (``model.to``, ``astype``, the optimizer's
    ``load_state_dict``), the buffers are rebuilt from the current arrays."""

    def __init__(self, opt, pairs):
        first = pairs[0][0]
        self.keys = [(i, k) for _, _, i, k in pairs]
        sizes = [int(p.size) for p, _, _, _ in pairs]
        self.offsets = []
        off = 0
        for size in sizes:
            self.offsets.append(off)
            off += -(-size // ALIGN) * ALIGN
        self.n = off
        xp = get_array_module(first)
        slots = opt._slots()
        self.p, self.g = _aligned_zeros(xp, self.n, first.dtype), _aligned_zeros(xp, self.n, first.dtype)
        self.slot = {name: _aligned_zeros(xp, self.n, first.dtype) for name in slots}
        self.views = []
        for (p, g, i, k), size, off in zip(pairs, sizes, self.offsets):
            params, grads = opt.parameters[i]
            bufs = (self.p, self.g) + tuple(self.slot.values())
            views = tuple(buf[off:off + size].reshape(p.shape) for buf in bufs)
            for view, a in zip(views, (p, g) + tuple(slots[name][i][k] for name in slots)):
                view[...] = a
            params[k], grads[k] = views[:2]
            for name, view in zip(slots, views[2:]):
                slots[name][i][k] = view
            self.views.append(views)

    def matches(self, opt, pairs):
        if [(i, k) for _, _, i, k in pairs] != self.keys:
            return False
        slots = opt._slots()
        if list(slots) != list(self.slot):
            return False
        return all(p is views[0] and all(slots[name][i][k] is view for name, view in zip(slots, views[2:]))
                   for (p, _, i, k), views in zip(pairs, self.views))

    def gather_grads(self, opt, pairs):
        """A gradient that is not our view (a caller assigned grads[k]) is copied in."""
        for (_, g, i, k), views in zip(pairs, self.views):
            if g is not views[1]:
                views[1][...] = g
                opt.parameters[i][1][k] = views[1]


class Adam(Optimizer):
    """Adam in the textbook form (Kingma & Ba's Algorithm 1), eps on the bias-corrected sqrt(v_hat):
        m = b1*m + (1-b1)*g      v = b2*v + (1-b2)*g^2
        m_hat = m / (1 - b1^t)   v_hat = v / (1 - b2^t)
        p -= lr * m_hat / (sqrt(v_hat) + eps)
    ``eps`` defaults to 1e-7, Keras' value (PyTorch uses 1e-8), but by default not Keras' placement.

    ``eps_placement="keras"`` puts eps where Keras does (keras/src/optimizers/adam.py, and
    tensorflow/python/keras/optimizer_v2/adam.py before it: the paper's "epsilon hat", on sqrt(v)
    before bias correction), to reproduce the study's optimizer exactly:
        alpha = lr * sqrt(1 - b2^t) / (1 - b1^t)
        p -= alpha * m / (sqrt(v) + eps)
    With sqrt(v) = sqrt(1 - b2^t) * sqrt(v_hat) that is the textbook update with eps replaced by
    eps / sqrt(1 - b2^t) (31.6 eps at t = 1, 1.26 eps at t = 1000, eps as b2^t -> 0), which is how
    it runs here: the same op, given that eps at each step. Where sqrt(v_hat) >> eps the two
    placements agree; they differ for gradients near eps or below it.
    """
    EPS_PLACEMENTS = ("kingma-ba", "keras")

    def __init__(self, parameters, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-7, eps_placement="kingma-ba"):
        super().__init__(parameters, lr)
        if eps_placement not in self.EPS_PLACEMENTS:
            raise ValueError(f"unknown eps_placement {eps_placement!r}: expected kingma-ba or keras")
        self.beta1, self.beta2, self.eps, self.eps_placement = beta1, beta2, eps, eps_placement
        self.m, self.v = self._zeros(), self._zeros()

    def _slots(self):
        return {"m": self.m, "v": self.v}

    def hyper(self):
        return {"beta1": self.beta1, "beta2": self.beta2, "eps": self.eps, "eps_placement": self.eps_placement}

    def load_state_dict(self, state):
        # Checkpoints from before the option hold no placement: theirs was Kingma & Ba's.
        hyper = state.get("hyper", {})
        saved = hyper.get("eps_placement", "kingma-ba") if isinstance(hyper, dict) else None
        if saved != self.eps_placement:
            raise ValueError(f"optimizer state was saved with eps_placement {saved!r}, this Adam uses "
                             f"{self.eps_placement!r}")
        super().load_state_dict(state)

    def step(self):
        self.t += 1
        pairs = list(self._pairs())                                   # (p, g, layer index, key)
        p, g = [a[0] for a in pairs], [a[1] for a in pairs]
        m, v = [self.m[i][k] for *_, i, k in pairs], [self.v[i][k] for *_, i, k in pairs]
        if pairs and (self.keep_flat or ops.adam_wants_flat(*p, *g, *m, *v)):   # CUDA Adam: one launch
            p, g, (m, v) = self._flat(pairs)
            m, v = [m], [v]
        eps = self.eps if self.eps_placement == "kingma-ba" else self.eps / (1 - self.beta2 ** self.t) ** 0.5
        ops.adam_update(p, g, m, v, self.lr, self.beta1, self.beta2, eps, self.t)



class SGD(Optimizer):
    """SGD with (heavy-ball) momentum, PyTorch's form: buf = momentum*buf + g; p -= lr*buf."""

    def __init__(self, parameters, lr, momentum=0.0):
        super().__init__(parameters, lr)
        self.momentum = momentum
        self.buf = self._zeros() if momentum else []

    def _slots(self):
        return {"buf": self.buf} if self.momentum else {}

    def hyper(self):
        return {"momentum": self.momentum}

    def step(self):
        self.t += 1
        if self.keep_flat:
            self._flat(list(self._pairs()))          # gather a gradient someone put in grads
        for p, g, i, k in self._pairs():
            if self.momentum:
                buf = self.buf[i][k]
                buf *= self.momentum
                buf += g
                g = buf
            p -= self.lr * g
