"""An export as an ONNX file: the same answers from onnxruntime, which is faster on a CPU.

The ONNX file reads what every caller in this project already gives an export: photos cut to their
``(B, 3, S, S)`` uint8 centre square, with ``S`` the export's ``resize_size`` (``square_batches`` for ``tag`` and
the decode cache, ``model_square`` for one photo). The export's own resize depends on each photo's shape, which one
ONNX graph cannot express. :func:`export_onnx` makes the file from the TorchScript export itself, so every export
converts (the shipped ones, models with added landmarks) without its training checkpoint:

1. freeze the export (its attributes become constants) and take the graph of its ``classify``, with every network
   that takes a CPU batch a few photos at a time (``photos_per_pass``) taking it whole: a loop ONNX cannot
   express, and onnxruntime plans its own memory;
2. specialise it to squares of ``S``: shape propagation and constant folding remove every size-dependent
   branch. The batch size stays free;
3. rewrite what the ONNX exporter cannot read. The ``no_grad`` scopes go, in-place ops become pure ones, and an
   antialiased resize (a model with added landmarks resizes the square for its base) becomes two matrix
   products with torch's own weights. onnxruntime's antialiased ``Resize`` differs from torch's by up to 5 % of
   the pixel range;
4. export with opset 18 (``searchsorted`` as a comparison and a count), with the export's metadata in
   ``metadata_props`` and the SHA-256 of the TorchScript file it was made from; the fp16 banks that freezing made
   float32 constants are stored as fp16 again, each with a ``Cast`` (exact: the same values);
5. check it: the file's answers for random squares must match the export's.

:class:`~src.onnx_runtime.OnnxExport` runs such a file, so :func:`~src.export.open_export` serves a ``.onnx`` file to
every command; :func:`faster_runtime` picks the faster of an export and its ONNX file for ``serve`` and ``tag``.
``bench/runtimes.py`` compares both runtimes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .export import ExportView, export_view, open_export, torchscript_on_purpose
from .files import atomic_write
from .onnx_runtime import INPUT, OUTPUTS, OnnxExport

OPSET = 18
TOLERANCE = 1e-4  # the largest difference in probability or known score export_onnx accepts
CHECK_BATCH = 4
HALF_CONSTANT = 65536  # float constants of this many values or more are stored as fp16 where that is exact


def _half_constants(graph: Any) -> None:
    """Store every large float constant whose values are all fp16 (the export's fp16 banks, which freezing turned into
    float32) as fp16 followed by a ``Cast`` back to float32: half the bytes, the same values."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    nodes = []
    for node in graph.node:
        value = node.attribute[0].t if node.op_type == "Constant" and node.attribute[0].name == "value" else None
        array = numpy_helper.to_array(value) if value is not None and value.data_type == TensorProto.FLOAT else None
        if array is None or array.size < HALF_CONSTANT or not np.array_equal(array.astype(np.float16), array):
            nodes.append(node)
            continue
        half = f"{node.output[0]}_fp16"
        stored = numpy_helper.from_array(array.astype(np.float16), half)
        nodes.append(helper.make_node("Constant", [], [half], value=stored))
        nodes.append(helper.make_node("Cast", [half], [node.output[0]], to=TensorProto.FLOAT))
    graph.ClearField("node")
    graph.node.extend(nodes)


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _resize_weights(size_in: int, size_out: int) -> torch.Tensor:
    """``(size_out, size_in)``: the weights of torch's antialiased bilinear resize along one side, taken from torch
    itself by resizing one-hot rows (two columns wide: a one-pixel-wide image resizes to zeros)."""
    one_hot = torch.eye(size_in).view(1, size_in, size_in, 1).expand(1, size_in, size_in, 2).contiguous()
    return F.interpolate(one_hot, size=(size_out, 2), mode="bilinear", align_corners=False, antialias=True)[0, :, :, 0].T


def _matrix_resizes(graph: torch._C.Graph) -> None:
    """Antialiased resizes of known size -> ``rows @ image @ columns`` (torch's weights, see :func:`_resize_weights`)."""
    for node in list(graph.findAllNodes("aten::_upsample_bilinear2d_aa")):
        height, width = node.inputsAt(0).type().varyingSizes()[2:]
        new_height, new_width = node.inputsAt(1).toIValue()
        with graph.insert_point_guard(node):
            rows = graph.insertConstant(_resize_weights(height, new_height).contiguous())
            columns = graph.insertConstant(_resize_weights(width, new_width).T.contiguous())
            by_rows = graph.insertNode(graph.create("aten::matmul", [rows, node.inputsAt(0)]))
            resized = graph.insertNode(graph.create("aten::matmul", [by_rows.output(), columns]))
        node.output().replaceAllUsesWith(resized.output())
        node.destroy()


def square_program(model: nn.Module | ExportView) -> torch.jit.ScriptFunction:
    """``classify`` of an export as a TorchScript function of ``(B, 3, S, S)`` uint8 squares alone, with no branch
    and no module (steps 1-3 of the module docstring)."""
    view = export_view(model)
    if isinstance(view.module, OnnxExport):
        raise ValueError("this is an ONNX file already: convert the TorchScript export it was made from")
    if view.format_version == 0:
        raise ValueError("this export has only forward (the classic project's format): export it again with "
                         "`python -m src export CHECKPOINT --out FILE` first")
    with torchscript_on_purpose():
        module = view.module if isinstance(view.module, torch.jit.ScriptModule) else torch.jit.script(view.module)
        with _whole_batches(module):
            module = torch.jit.freeze(module.eval(), preserved_attrs=["classify"])
    graph = module.classify.graph.copy()
    torch._C._jit_pass_inline(graph)
    example = torch.zeros(2, 3, view.resize_size, view.resize_size, dtype=torch.uint8)
    list(graph.inputs())[1].setType(torch._C.TensorType.create_from_tensor(example))
    for _ in range(3):  # each round resolves sizes that the branches folded by the previous one computed
        torch._C._jit_pass_propagate_shapes_on_graph(graph)
        torch._C._jit_pass_peephole(graph, False)
        torch._C._jit_pass_constant_propagation(graph)
        torch._C._jit_pass_dce(graph)
    left = [node.kind() for node in graph.nodes() if node.kind() in ("prim::If", "prim::Loop", "prim::GetAttr")]
    if left:
        raise ValueError(f"this export's classify keeps {len(left)} step(s) ONNX cannot express for a fixed square "
                         f"({', '.join(sorted(set(left)))}); export to ONNX is not possible for it")
    torch._C._jit_pass_remove_mutation(graph)
    for kind in ("prim::Exit", "prim::Enter", "prim::SetAttr"):  # the no_grad scopes
        for node in list(graph.findAllNodes(kind)):
            node.destroy()
    torch._C._jit_pass_dce(graph)
    _matrix_resizes(graph)
    graph.eraseInput(0)
    return torch._C._create_function_from_graph("classify_squares", graph)


@contextlib.contextmanager
def _whole_batches(module: torch.jit.ScriptModule) -> Iterator[None]:
    """Every submodule of ``module`` that splits a batch (``photos_per_pass``) takes it whole, until the block ends."""
    splitting = [(part, int(part.photos_per_pass)) for _, part in module.named_modules() if hasattr(part, "photos_per_pass")]
    for part, _ in splitting:
        part.photos_per_pass = 0
    try:
        yield
    finally:
        for part, photos in splitting:
            part.photos_per_pass = photos


class _Program(nn.Module):
    """What the ONNX exporter traces: a module that calls the square program."""

    def __init__(self, program: torch.jit.ScriptFunction) -> None:
        super().__init__()
        self.program = program

    def forward(self, squares: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.program(squares)


def _searchsorted(g: Any, sorted_sequence: Any, values: Any, out_int32: bool, right: bool, side: str | None, sorter: Any
                  ) -> Any:
    """``torch.searchsorted`` of a 1-D sorted sequence: how many of it are below (``right``: not above) each value."""
    right = right or side == "right"
    row = g.op("Unsqueeze", sorted_sequence, g.op("Constant", value_t=torch.tensor([0])))
    column = g.op("Unsqueeze", values, g.op("Constant", value_t=torch.tensor([-1])))
    below = g.op("LessOrEqual" if right else "Less", row, column)
    count = g.op("ReduceSum", g.op("Cast", below, to_i=7), g.op("Constant", value_t=torch.tensor([-1])), keepdims_i=0)
    return g.op("Cast", count, to_i=6) if out_int32 else count  # 7: INT64, 6: INT32


@contextlib.contextmanager
def _onnx_exporter() -> Iterator[None]:
    from torch.onnx import symbolic_helper

    symbolic = symbolic_helper.parse_args("v", "v", "b", "b", "s", "v")(_searchsorted)
    torch.onnx.register_custom_op_symbolic("aten::searchsorted", symbolic, OPSET)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter warns that it is deprecated; it is the one that reads TorchScript
            yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::searchsorted", OPSET)


def export_onnx(model: nn.Module | ExportView, path: str | Path, source_sha256: str = "") -> Path:
    """Write ``model`` (an export, or a :class:`~src.export.Predictor`) as an ONNX file at ``path``, atomically, after
    checking its answers against the model's. ``source_sha256``: of the TorchScript file it is made from (``serve``
    uses it beside that file only while they match)."""
    import onnx

    view = export_view(model)
    program = square_program(view)
    example = torch.zeros(2, 3, view.resize_size, view.resize_size, dtype=torch.uint8)
    buffer = io.BytesIO()
    batch = {0: "batch"}
    with _onnx_exporter():
        torch.onnx.export(_Program(program), (example,), buffer, dynamo=False, opset_version=OPSET, input_names=[INPUT],
                          output_names=list(OUTPUTS), dynamic_axes={name: batch for name in (INPUT, *OUTPUTS)})
    proto = onnx.load_from_string(buffer.getvalue())
    _half_constants(proto.graph)
    metadata = {"format_version": view.format_version, "class_names": json.dumps(view.class_names),
                "places_json": json.dumps({name: place.to_dict() for name, place in view.places.items()}, sort_keys=True),
                "unknown_threshold": repr(view.unknown_threshold), "resize_size": view.resize_size,
                "image_size": view.image_size, "source_sha256": source_sha256}
    onnx.helper.set_model_props(proto, {key: str(value) for key, value in metadata.items()})
    data = proto.SerializeToString()
    difference = largest_difference(view, OnnxExport(data, str(path)), random_squares(CHECK_BATCH, view.resize_size))
    if difference > TOLERANCE:
        raise ValueError(f"{path}: the ONNX file's answers differ from the export's by {difference:.2g} (more than "
                         f"{TOLERANCE:g}); it was not written")
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def random_squares(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def largest_difference(first: ExportView | OnnxExport, second: ExportView | OnnxExport, squares: torch.Tensor) -> float:
    """The largest difference in probability or known score between two models' answers for the same squares."""
    with torch.inference_mode():
        answers = zip(first.classify(squares), second.classify(squares))
        return max(float((a.float() - b.float()).abs().max()) for a, b in answers)


def seconds_per_batch(model: ExportView, squares: torch.Tensor, repeats: int = 3) -> float:
    """The fastest of ``repeats`` timed ``classify`` calls on ``squares``, after one untimed call."""
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            model.classify(squares)
            times.append(time.perf_counter() - start)
    return min(times[1:])


def runtime_name(model: ExportView) -> str:
    return "onnxruntime" if isinstance(model.module, OnnxExport) else "torchscript"


def faster_runtime(path: str | Path, batch: int = 8) -> ExportView:
    """The export at ``path``, on onnxruntime when an ONNX file made from it lies beside it (same name, ``.onnx``) and
    answers a batch of ``batch`` squares faster here, timed now; on TorchScript otherwise. An ONNX file made from
    another version of the export is left aside with a warning."""
    path = Path(path)
    view = open_export(path)
    twin = path.with_suffix(".onnx")
    if path.suffix == ".onnx" or not twin.is_file():
        return view
    onnx_view = open_export(twin)
    if onnx_view.module.source_sha256 != file_sha256(path):
        warnings.warn(f"{twin} was not made from {path} (export it again: `python -m src export {path} --format onnx "
                      f"--out {twin}`); serving {path} with TorchScript", stacklevel=2)
        return view
    squares = random_squares(batch, view.resize_size)
    return onnx_view if seconds_per_batch(onnx_view, squares) < seconds_per_batch(view, squares) else view
