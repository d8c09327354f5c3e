"""BatchNorm2D -> ReLU (-> MaxPool2D) fusion for the CUDA and numba kernels, keeping the layer list.

All layers stay in ``model.layers`` (state dicts, summaries and exports are untouched). At run time,
inside a model's forward (``Sequential.forward`` runs its layers inside :func:`chain`):
  - a BatchNorm2D directly followed by a ReLU applies max(y, 0) itself when it runs its CUDA or
    numba kernels, and hands the ReLU over: the ReLU then passes x (and later dy) through; on any
    other path (plain NumPy or CuPy, dtypes the kernels do not take) the ReLU does its usual work.
    The BatchNorm's backward masks dy with y > 0.
  - on the numba path, a MaxPool2D with non-overlapping windows (stride >= kernel) right after that
    ReLU is applied by the BatchNorm too (kernels/norm_cpu.py: the full-resolution BatchNorm+ReLU
    output and its gradient are never materialised) and passes values through the same way.
So each run computes the same function on every path, whatever device or dtype.

What is fused is decided per call and per thread, never stored on the layers: :func:`chain` finds
the runs in the list it is given, a BatchNorm2D asks :func:`partners` whether it starts one, and
hands its partners over with :func:`applied`; each partner takes its hand-over once with
:func:`take`. So a layer called on its own (``model.layers[1].forward(x)``, as a walkthrough or a
user probing activations does), a sub-model built from ``model.layers[:3]``, a layer object used
twice in one model, or several threads running one model at once all get the plain semantics.
"""
import contextlib
import threading

_state = threading.local()          # .run: (plan, handed-over layer ids) of the innermost chain


def fusion_plan(layers):
    """{id(bn): (relu, pool or None)} for each BatchNorm2D -> ReLU (-> non-overlapping MaxPool2D)
    in ``layers``."""
    from ..layers import BatchNorm2D, MaxPool2D, ReLU
    layers = list(layers)
    plan = {}
    for i, (bn, relu) in enumerate(zip(layers, layers[1:])):
        if type(bn) is BatchNorm2D and type(relu) is ReLU:
            pool = layers[i + 2] if i + 2 < len(layers) else None
            if not (type(pool) is MaxPool2D and pool.stride[0] >= pool.kernel_size[0]
                    and pool.stride[1] >= pool.kernel_size[1]):
                pool = None
            plan[id(bn)] = (relu, pool)
    return plan


@contextlib.contextmanager
def chain(layers):
    """Run ``layers`` (a model's list, in order) with their BatchNorm2D -> ReLU (-> MaxPool2D) runs
    fused, in this thread."""
    before = getattr(_state, "run", None)
    _state.run = (fusion_plan(layers), set())
    try:
        yield
    finally:
        _state.run = before


def partners(bn):
    """(relu, pool or None) when ``bn`` starts a fused run of the current chain, else None."""
    run = getattr(_state, "run", None)
    return run[0].get(id(bn)) if run is not None else None


def applied(*layers):
    """A BatchNorm2D did these layers' work: each passes its next input through (see take)."""
    run = _state.run
    for layer in layers:
        if layer is not None:
            run[1].add(id(layer))


def take(layer):
    """True, once, when the BatchNorm2D before ``layer`` in the current chain did its work."""
    run = getattr(_state, "run", None)
    if run is None or id(layer) not in run[1]:
        return False
    run[1].discard(id(layer))
    return True
