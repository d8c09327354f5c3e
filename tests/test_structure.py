"""The architecture, held by tests: layers hold state and call ops; the ops choose their implementation
in one place (tinyconv/ops/__init__.py); fusion is a plan, not thread-local hand-overs; the import
graph has no cycle; ``import tinyconv`` loads the library and nothing heavy."""
import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from tinyconv import ops

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tinyconv"


def modules():
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def import_graph():
    """{module: tinyconv modules it imports anywhere in its source, lazy imports included}.
    ``import X.Y`` is an edge to X.Y; ``from X import a`` to X.a when that is a module, else to X.
    (A package's __init__ runs before each of its submodules; the edges out of it are counted.)"""
    mods = modules()
    graph = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in mods and t != name}
        graph[name] = edges
    return graph


def find_cycle(graph):
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(v):
        state[v] = "open"
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == "open":
                return stack[stack.index(w):] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        state[v] = "done"
        stack.pop()
        return None
    for v in sorted(graph):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_layers_import_no_kernel_and_no_fast_implementation():
    graph = import_graph()
    for name, edges in graph.items():
        if name.startswith("tinyconv.layers"):
            bad = sorted(e for e in edges if e.startswith("tinyconv.kernels") or e.endswith(("_numba", "_cuda")))
            assert not bad, f"{name} imports {bad}: layers call tinyconv.ops, which chooses"


def test_no_function_in_the_layers_is_longer_than_40_lines():
    for f in sorted((PACKAGE / "layers").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                assert lines <= 40, f"{f.name}: {node.name} has {lines} lines"


def test_fusion_keeps_no_thread_local_state():
    for f in [PACKAGE / "fusion.py", PACKAGE / "sequential.py", *sorted((PACKAGE / "ops").glob("*.py"))]:
        assert "threading" not in f.read_text(), f"{f.name} uses threading"


def test_import_tinyconv_loads_the_library_only():
    code = ("import sys, tinyconv; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'PIL', 'h5py', 'matplotlib', 'onnx', 'onnxruntime', 'coremltools', 'tqdm'} or m.startswith("
            "('tinyconv.data', 'tinyconv.report', 'tinyconv.export', 'tinyconv.predict', 'tinyconv.training'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


OP_FUNCTIONS = {"conv2d": ["conv2d_forward", "conv2d_backward", "conv2d_saved_bytes"],
                "batchnorm": ["batchnorm_forward", "batchnorm_backward", "batchnorm_saved_bytes"],
                "bn_relu": ["bn_relu_forward", "bn_relu_backward", "bn_relu_saved_bytes"],
                "bn_relu_maxpool": ["bn_relu_maxpool_forward", "bn_relu_maxpool_backward",
                                    "bn_relu_maxpool_saved_bytes"],
                "maxpool": ["maxpool_forward", "maxpool_backward", "maxpool_saved_bytes"],
                "relu": ["relu_forward", "relu_backward", "relu_saved_bytes"],
                "bce": ["bce_forward", "bce_backward"],
                "adam": ["adam_update"]}


@pytest.mark.parametrize("op", sorted(ops.REFERENCE))
def test_every_implementation_of_an_op_has_the_reference_signature(op):
    reference = ops.REFERENCE[op]
    fast = [table[op] for table in ops.FAST.values() if op in table]
    assert fast, f"{op} has no fast implementation"
    for fn in OP_FUNCTIONS[op]:
        want = inspect.signature(getattr(reference, fn))
        for impl in fast:
            assert inspect.signature(getattr(impl, fn)) == want, f"{impl.__name__}.{fn}"


def test_the_backend_is_chosen_from_the_arrays(monkeypatch):
    import numpy as np
    monkeypatch.setattr(ops, "NUMBA", True)
    assert ops.backend(np.zeros(2, np.float32), np.zeros(3, np.float32)) == ("numba" if ops.HAVE_NUMBA else "reference")
    monkeypatch.setattr(ops, "NUMBA", False)
    assert ops.backend(np.zeros(2, np.float32)) == "reference"
    assert ops.backend_for("gpu", np.float32) == ("cuda" if ops.CUDA else "reference")
    assert ops.backend_for("gpu", np.float64) == "reference"
