"""Export a trained tinyconv model for deployment.

fold.py          BatchNorm folded into the convolution before it, dropout removed: a short list of
                 inference ops that every exporter walks
onnx_export.py   model.onnx (opset 17, IR 8), preprocessing inside the graph
coreml_export.py model.mlpackage (Core ML program built with coremltools' MIL builder)
mil_check.py     a small NumPy interpreter for the saved Core ML program (verification on Linux)
source.py        find and open a checkpoint (a file, a run folder, or the newest run)
exporter.py      export(): everything above, as ``python export.py`` runs it
"""
from .fold import fold_model, run_folded
