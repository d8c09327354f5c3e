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
from .predict import load
from .sequential import Sequential

__version__ = "0.1.0"

__all__ = ["Conv2D", "MaxPool2D", "Dense", "BatchNorm2D", "ReLU", "Dropout", "GlobalAvgPool2D",
           "Flatten", "Layer", "Sequential", "BCEWithLogits", "sigmoid", "Adam", "SGD", "seed_cnn",
           "get_array_module", "to_device", "to_cpu", "gpu_available", "gpu_status",
           "GPUUnavailableError", "load", "__version__"]
