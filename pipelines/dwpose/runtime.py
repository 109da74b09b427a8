"""onnxruntime sessions for the two DWPose networks.

CUDA (optionally TensorRT) when the device asks for it and the providers exist, CPU otherwise. On GPU
the input is bound with IO binding and the outputs stay on the device until copied back once. A model
whose batch axis is fixed (the stock YOLOX export is ``[1, 3, 640, 640]``) is run in chunks of that size.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pipelines.common.onnx_providers import Provider
from pipelines.common.onnx_providers import providers_for as shared_providers_for

log = logging.getLogger(__name__)

TENSORRT_ENV = "FAL_ONPREM_DWPOSE_TENSORRT"  # "1": put TensorRT first when its provider exists


def providers_for(device: str) -> list[Provider]:
    return shared_providers_for(device, tensorrt=os.environ.get(TENSORRT_ENV) == "1")


class OnnxModel:
    """One single-input ONNX network; ``model(x)`` returns its outputs as numpy arrays."""

    def __init__(self, model: str | Path | bytes, device: str = "cpu", threads: int | None = None) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        # idle intra-op threads would spin after each run, taking the cores that the per-item finish pool
        # (drawing + PNG encoding) and the worker's prepare threads need right then
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, sess_options=options, providers=providers_for(device))
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.input_shape = first.shape
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.fixed_batch = first.shape[0] if isinstance(first.shape[0], int) else None
        active = self.session.get_providers()
        self.device_id = int(device.partition(":")[2] or 0)
        self.on_gpu = any(p in active for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider"))

    @property
    def dynamic_batch(self) -> bool:
        return self.fixed_batch is None

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.fixed_batch is None or x.shape[0] == self.fixed_batch:
            return self._run(x)
        n, step = x.shape[0], self.fixed_batch
        padded = np.concatenate([x, np.zeros((-n % step, *x.shape[1:]), x.dtype)]) if n % step else x
        chunks = [self._run(padded[i : i + step]) for i in range(0, padded.shape[0], step)]
        return [np.concatenate(parts)[:n] for parts in zip(*chunks, strict=True)]

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        if not self.on_gpu:
            return self.session.run(self.output_names, {self.input_name: x})
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, x)
        for name in self.output_names:
            binding.bind_output(name, "cuda", self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()
