"""tinyconv.data: CelebA (three layouts) -> one HDF5 cache -> batches; plus a synthetic stand-in.

    from tinyconv.data import load_dataset
    ds = load_dataset(source=None, image_size=(54, 44))   # built-in synthetic set (NOT CelebA)
    for batch in ds.batches("train", batch_size=32, seed=0, epoch=0):
        batch.x  # float32 (B, 3, H, W) in [0, 1];  batch.y  float32 (B, K);  batch.index int64 (B,)

Command line: ``python -m tinyconv.data prepare ROOT --out FILE.h5`` and
``python -m tinyconv.data synthesize OUT --count N``. See docs/data.md.
"""
from .batches import Batch, BatchIterator, epoch_order
from .celeba import ATTRIBUTE_NAMES, DEFAULT_ATTRIBUTES, detect_layout
from .dataset import SYNTHETIC_WARNING, Dataset, load_dataset, load_for_settings, recorded_data_paths
from .errors import DataError, UsageError
from .prepare import prepare
from .resize import FULL_SIZE, RESIZE_FILTER, RESIZE_POLICY, crop_box, resize_to_model
from .synthetic import DEFAULT_COUNT as DEFAULT_SYNTHETIC_COUNT
from .synthetic import synthesize

__all__ = [
    "ATTRIBUTE_NAMES", "Batch", "BatchIterator", "DEFAULT_ATTRIBUTES", "DEFAULT_SYNTHETIC_COUNT",
    "DataError", "Dataset", "FULL_SIZE", "RESIZE_FILTER", "RESIZE_POLICY", "SYNTHETIC_WARNING",
    "crop_box", "detect_layout", "epoch_order", "load_dataset", "load_for_settings", "prepare",
    "recorded_data_paths", "resize_to_model",
    "synthesize", "UsageError",
]
