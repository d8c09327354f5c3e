"""How an op hands over a parameter's gradient: into the array already in ``grads``.

Every backward writes its gradients with :func:`store_grad`, so gradient memory has one owner:
whoever put the array in ``grads`` first (the layer's first backward, or the optimizer that keeps
its parameters and gradients in flat buffers, see ``tinyconv.optim.FlatBuffers``). A backward never
replaces an array that fits; with ``accumulate`` it adds to it (micro-batches summing into one step).
"""


def store_grad(grads, key, value, accumulate=False):
    """grads[key] = value, written into the array there when it has value's shape, dtype and type;
    with ``accumulate``, grads[key] += value (the first call of a step writes, later ones add)."""
    g = grads.get(key)
    fits = (g is not None and type(g) is type(value) and g.shape == value.shape and g.dtype == value.dtype)
    if accumulate and fits:
        g += value
    elif fits:
        g[...] = value
    else:                   # a new array of its own (value may be a view of a temporary)
        grads[key] = value if value.base is None and value.flags.c_contiguous else value.copy()
