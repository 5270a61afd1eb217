"""An ONNX file made by :func:`src.onnx_export.export_onnx`, run by onnxruntime with what :class:`~src.export.ExportView`
reads of an export. Needs onnxruntime, NumPy and torch only: :func:`~src.export.open_export` loads it for a ``.onnx`` file.
"""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING

import numpy as np
import torch

from .model_files import is_torchscript_file
from .preprocessing import square_uint8

if TYPE_CHECKING:
    import onnxruntime

INPUT = "photos"
OUTPUTS = ("probabilities", "known_scores")


class OnnxExport:
    """An ONNX export run by onnxruntime (on the CPU, with as many threads as torch uses): ``classify`` and the metadata.

    ``classify`` takes ``(B, 3, S, S)`` uint8 squares as the ONNX file does; other sizes are cut to that
    square first (:func:`~src.preprocessing.square_uint8`), and float photos (0-1) are rounded to uint8."""

    def __init__(self, data: bytes, source: str = "the model") -> None:
        self._data = data
        self.threads = torch.get_num_threads()
        try:
            self.session = self._session(self.threads)
        except Exception as error:  # onnxruntime raises its own error types for foreign files
            if is_torchscript_file(io.BytesIO(data)):
                raise ValueError(f"{source}: a TorchScript export named .onnx; name it .pt, or make its ONNX file with "
                                 "`export --format onnx`") from error
            raise ValueError(f"{source}: not an ONNX export ({error})") from error
        metadata = self.session.get_modelmeta().custom_metadata_map
        if "class_names" not in metadata or "resize_size" not in metadata:
            raise ValueError(f"{source}: ONNX file without class_names or resize_size; it was not exported by this project")
        self.format_version = int(metadata["format_version"])
        self.class_names: list[str] = json.loads(metadata["class_names"])
        self.resize_size = int(metadata["resize_size"])
        self.image_size = int(metadata["image_size"])
        self.unknown_threshold = float(metadata["unknown_threshold"])
        self.places_json = metadata["places_json"]
        self.source_sha256 = metadata.get("source_sha256", "")

    def _session(self, threads: int) -> onnxruntime.InferenceSession:
        """A session on ``threads`` threads (torch's count): its threads are fixed when it opens, and ``tag`` gives the model
        fewer threads for large photos (:func:`src.tagging.model_threads`), as it does TorchScript."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # onnxruntime's threads spin while they wait for work by default: beside the service's decoding threads that
        # took their cores (16 clients on 2 cores: 158 photos/s and p99 318 ms spinning, 196/s and 136 ms not; bench/serve.py)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return onnxruntime.InferenceSession(self._data, options, providers=["CPUExecutionProvider"])

    def classify(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probabilities (B, C), known scores (B,))`` of ``(B, 3, H, W)`` or ``(3, H, W)`` photos, with as many threads
        as torch uses now (the session opens again when that changed)."""
        if (threads := torch.get_num_threads()) != self.threads:
            self.threads, self.session = threads, self._session(threads)
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dtype != torch.uint8:
            images = (images.float() * 255).round().clamp(0, 255).to(torch.uint8)
        if tuple(images.shape[-2:]) != (self.resize_size, self.resize_size):
            images = torch.stack([square_uint8(image, self.resize_size) for image in images])
        probabilities, scores = self.session.run(None, {INPUT: np.ascontiguousarray(images.cpu().numpy())})
        return torch.from_numpy(probabilities), torch.from_numpy(scores)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities, as an export's ``forward`` gives them."""
        return self.classify(images)[0]

    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise ValueError("an ONNX export answers classify only: add landmarks to (or measure features of) the "
                         "TorchScript export it was made from")
