"""Adam on CuPy float32 arrays (kernels/cuda/optim.cu): one launch per array, the reference's
arithmetic (optim.py) in float32. Given the optimizer's flat buffers (one array each for all the
parameters, their gradients, m and v: see ``tinyconv.optim.FlatBuffers``) that is one launch a step.
"""
from ..kernels.common_gpu import f32, i64, launch

WANTS_FLAT = True            # the optimizer keeps its arrays in flat buffers for this one


def adam_update(params, grads, ms, vs, lr, beta1, beta2, eps, t):
    bc1, bc2 = 1 - beta1 ** t, 1 - beta2 ** t
    for p, g, m, v in zip(params, grads, ms, vs):
        launch("optim", "adam_update", p.size, p, g, m, v, i64(p.size),
               f32(beta1), f32(1 - beta1), f32(beta2), f32(1 - beta2), f32(bc2), f32(eps), f32(lr / bc1))
