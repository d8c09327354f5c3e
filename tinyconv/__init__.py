"""tinyconv: a framework-free convolutional-network library on NumPy (CPU) and CuPy (GPU).

Every layer has an explicit forward and backward pass; see README.md and docs/walkthroughs/.
"""
from .backend import (GPUUnavailableError, get_array_module, gpu_available, gpu_status, to_cpu,
                      to_device)
from .layers import (BatchNorm2D, Conv2D, Dense, Dropout, Flatten, GlobalAvgPool2D, Layer, MaxPool2D,
                     ReLU)
from .losses import BCEWithLogits, sigmoid
from .models import seed_cnn
from .optim import SGD, Adam
from .sequential import Sequential

__version__ = "0.1.0"


def load(path=None, runs_dir="runs", announce=None):
    """Load a model for prediction from a checkpoint .h5, a run folder, an experiment folder (its run
    with the lowest validation loss), an exported folder or a model.onnx; None loads the newest run's
    best checkpoint. See :func:`tinyconv.predict.load`, which this imports on first use (with Pillow,
    h5py and the data and export packages, which ``import tinyconv`` alone does not load)."""
    from .predict import load as load_model
    return load_model(path, runs_dir, announce)


__all__ = ["Conv2D", "MaxPool2D", "Dense", "BatchNorm2D", "ReLU", "Dropout", "GlobalAvgPool2D",
           "Flatten", "Layer", "Sequential", "BCEWithLogits", "sigmoid", "Adam", "SGD", "seed_cnn",
           "get_array_module", "to_device", "to_cpu", "gpu_available", "gpu_status",
           "GPUUnavailableError", "load", "__version__"]
