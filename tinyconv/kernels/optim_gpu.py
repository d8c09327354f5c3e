"""One Adam launch for all parameters (cuda/optim.cu), with the state in flat device buffers.

On the first GPU step the optimizer's parameters, m and v move into three flat float32 buffers,
and the arrays in the layers' ``params`` dicts (and the optimizer's m, v dicts) are replaced by
views into them: layers keep reading ``params["w"]`` as before, and the kernel updates every
parameter in one pass. Gradients go into a fourth flat buffer: a layer that writes its gradient
into the view it finds in ``grads`` (conv and BatchNorm do, see ``common_gpu.grad_out``) costs
nothing; any other gradient array is copied in (one small copy launch).

The views are checked by identity at each step (a few dozen ``is`` tests on the host): if anything
replaced an array (``model.to``, ``astype``, ``load_state_dict`` of the optimizer), the flat
buffers are rebuilt from the current arrays, so the plain path's semantics never change.
"""
import numpy as np

from .common_gpu import f32, i64, launch, use_gpu_kernels


class FlatAdamState:
    def __init__(self, opt, pairs):
        import cupy
        self.keys = [(i, k) for _, _, i, k in pairs]
        sizes = [int(p.size) for p, _, _, _ in pairs]
        self.n = sum(sizes)
        self.p, self.g, self.m, self.v = (cupy.empty(self.n, dtype=np.float32) for _ in range(4))
        self.views = []
        off = 0
        for (p, _, i, k), size in zip(pairs, sizes):
            params, grads = opt.parameters[i]
            views = tuple(buf[off:off + size].reshape(p.shape) for buf in (self.p, self.g, self.m, self.v))
            views[0][...] = p
            views[2][...] = opt.m[i][k]
            views[3][...] = opt.v[i][k]
            params[k], opt.m[i][k], opt.v[i][k] = views[0], views[2], views[3]
            self.views.append(views)
            off += size

    def matches(self, opt, pairs):
        if [(i, k) for _, _, i, k in pairs] != self.keys:
            return False
        return all(p is views[0] and opt.m[i][k] is views[2] and opt.v[i][k] is views[3]
                   for (p, _, i, k), views in zip(pairs, self.views))

    def gather_grads(self, opt, pairs):
        for (_, g, i, k), views in zip(pairs, self.views):
            if g is not views[1]:
                views[1][...] = g
                opt.parameters[i][1][k] = views[1]        # the next backward may write into it


def adam_step(opt, bc1, bc2):
    """Adam.step's update for CuPy float32 parameters, in one launch. Returns False (and touches
    nothing) when the parameters do not qualify, and the caller runs the plain path."""
    pairs = list(opt._pairs())
    if not pairs or not all(use_gpu_kernels(p, g, opt.m[i][k], opt.v[i][k]) and p.shape == g.shape
                            for p, g, i, k in pairs):
        return False
    state = getattr(opt, "_gpu_flat", None)
    if state is None or not state.matches(opt, pairs):
        state = opt._gpu_flat = FlatAdamState(opt, pairs)
    state.gather_grads(opt, pairs)
    b1, b2 = opt.beta1, opt.beta2
    launch("optim", "adam_update", state.n, state.p, state.g, state.m, state.v, i64(state.n),
           f32(b1), f32(1 - b1), f32(b2), f32(1 - b2), f32(bc2), f32(opt.eps), f32(opt.lr / bc1))
    return True
