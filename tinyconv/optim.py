"""Optimizers: Adam (Kingma & Ba 2015) and SGD with momentum, updating parameters in place.

Both take the list of ``(params, grads)`` dict pairs that ``Sequential.parameters()`` returns and
read ``grads`` at each ``step()``, so layers may replace their gradient arrays freely.
"""
import numpy as np

from .backend import get_array_module, to_cpu, to_device, device_of
from .kernels import use_cpu_kernels
from .kernels.common_gpu import use_gpu_kernels


class Optimizer:
    def __init__(self, parameters, lr):
        self.parameters = list(parameters)
        self.lr = lr
        self.t = 0

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


class Adam(Optimizer):
    """Adam in the textbook form:
        m = b1*m + (1-b1)*g      v = b2*v + (1-b2)*g^2
        m_hat = m / (1 - b1^t)   v_hat = v / (1 - b2^t)
        p -= lr * m_hat / (sqrt(v_hat) + eps)
    ``eps`` defaults to 1e-7, Keras' value, as in the study being reproduced (PyTorch uses 1e-8).
    """

    def __init__(self, parameters, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-7):
        super().__init__(parameters, lr)
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.m, self.v = self._zeros(), self._zeros()

    def _slots(self):
        return {"m": self.m, "v": self.v}

    def hyper(self):
        return {"beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}

    def step(self):
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        bc1, bc2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        if self.parameters and use_gpu_kernels(*self.parameters[0][0].values()):
            from .kernels import optim_gpu               # one CUDA launch for all parameters
            if optim_gpu.adam_step(self, bc1, bc2):
                return
        fast = []                       # (flat p, g, m, v, scalars) for the numba kernel
        for p, g, i, k in self._pairs():
            xp = get_array_module(p)
            m, v = self.m[i][k], self.v[i][k]
            if (use_cpu_kernels(p, g, m, v) and p.dtype == g.dtype == m.dtype == v.dtype
                    and all(a.flags.c_contiguous for a in (p, g, m, v))):
                t = p.dtype.type
                fast.append((p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1),
                             (t(b1), t(1 - b1), t(b2), t(1 - b2), t(bc2), t(self.eps), t(self.lr / bc1))))
                continue
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            denom = xp.sqrt(v / bc2)
            denom += self.eps
            p -= (self.lr / bc1) * m / denom
        if fast:
            # numba: one in-place pass per array (tinyconv/kernels/optim_cpu.py), same arithmetic
            # as above; the threads take equal slices of every array (elementwise: same result)
            from .kernels import optim_cpu
            from .kernels.threads import parts_for, run_parts, split
            size = sum(a[0].size for a in fast)
            parts = parts_for(size, size)

            def update(part):
                for p, g, m, v, scalars in fast:
                    a, b = split(p.size, parts, part)
                    optim_cpu.adam_update(p[a:b], g[a:b], m[a:b], v[a:b], *scalars)
            run_parts(update, parts)


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
        for p, g, i, k in self._pairs():
            if self.momentum:
                buf = self.buf[i][k]
                buf *= self.momentum
                buf += g
                g = buf
            p -= self.lr * g
