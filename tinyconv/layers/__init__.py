"""Layers: each a class with forward(x, train) -> y, backward(dy) -> dx and params/grads/buffers dicts.

A layer holds its state and calls its op (tinyconv/ops/), which holds the math."""
from .activations import Dropout, ReLU
from .base import Layer, conv_out_size
from .conv import Conv2D, col2im, im2col
from .dense import Dense, Flatten
from .norm import BatchNorm2D
from .pool import GlobalAvgPool2D, MaxPool2D

__all__ = ["Layer", "Conv2D", "MaxPool2D", "GlobalAvgPool2D", "Dense", "Flatten", "BatchNorm2D",
           "ReLU", "Dropout", "im2col", "col2im", "conv_out_size"]
