"""ONNX Runtime sessions over an exported directory (see export.py), on the CPU, CUDA or TensorRT.

    models = OnnxModels("runs/demo/onnx", device="cuda")      # "cpu" | "cuda" | "tensorrt"
    codes = models.run("tokenizer_encoder", pixel_values=pixels)[0]

On "cuda" and "tensorrt" inputs and outputs go through IO binding as device OrtValues, so the KV
cache of a decode loop stays on the GPU between steps. "tensorrt" uses ONNX Runtime's TensorRT
execution provider, whose engines are cached under `<export dir>/trt_cache/<gpu>-trt<version>/`
(TensorRT builds an engine per GPU model and TensorRT version, and builds take minutes).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from illume_core import read_json

from .export import MANIFEST
from .ort import missing_provider, onnxruntime

DEVICES = ("cpu", "cuda", "tensorrt")


def _trt_cache_dir(directory: Path) -> Path:
    ort = onnxruntime()

    try:
        import torch

        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "gpu"
    except ImportError:  # deployers may run without torch's CUDA build
        gpu = "gpu"
    try:
        import tensorrt

        version = tensorrt.__version__
    except ImportError:
        version = f"ort{ort.__version__}"
    return directory / "trt_cache" / re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{gpu}-trt{version}")


def providers(device: str, directory: Path) -> list:
    """The execution providers, in order of preference, for `device`."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    cuda = ("CUDAExecutionProvider", {"device_id": 0})
    if device == "cuda":
        return [cuda, "CPUExecutionProvider"]
    if device == "tensorrt":
        cache = _trt_cache_dir(directory)
        cache.mkdir(parents=True, exist_ok=True)
        trt = (
            "TensorrtExecutionProvider",
            {
                "device_id": 0,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(cache),
            },
        )
        return [trt, cuda, "CPUExecutionProvider"]
    raise ValueError(f"device must be one of {DEVICES}, got {device!r}")


class OnnxModels:
    """Sessions for the graphs listed in an export directory's manifest, created on first use."""

    def __init__(
        self, directory: str | os.PathLike, device: str = "cpu", threads: int | None = None
    ):
        ort = onnxruntime()

        self.directory = Path(directory)
        manifest = self.directory / MANIFEST
        if not manifest.is_file():
            raise FileNotFoundError(
                f"{self.directory} has no {MANIFEST}: export a pipeline first (`illume export --model DIR --out DIR`)"
            )
        self.manifest = read_json(manifest)
        self.device = device
        self.providers = providers(device, self.directory)
        available = set(ort.get_available_providers())
        wanted = self.providers[0] if isinstance(self.providers[0], str) else self.providers[0][0]
        if wanted not in available:
            raise RuntimeError(missing_provider(wanted, available))
        self.options = ort.SessionOptions()
        self.options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            self.options.intra_op_num_threads = threads
        # Idle pool threads sleep instead of spinning: a decode loop alternates ONNX Runtime with
        # sampling in PyTorch, and spinning threads would take the cores from it.
        self.options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._sessions: dict = {}

    @property
    def on_gpu(self) -> bool:
        return self.device != "cpu"

    def session(self, name: str):
        ort = onnxruntime()

        if name not in self._sessions:
            graphs = self.manifest["graphs"]
            if name not in graphs:
                raise KeyError(
                    f"no graph {name!r} in {self.directory / MANIFEST}; it lists {sorted(graphs)}"
                )
            path = self.directory / graphs[name]["file"]
            self._sessions[name] = ort.InferenceSession(
                str(path), self.options, providers=self.providers
            )
        return self._sessions[name]

    def run(self, name: str, **inputs: np.ndarray) -> list[np.ndarray]:
        """Host arrays in, host arrays out (outputs in the manifest's order)."""
        return self.session(name).run(None, inputs)

    def ortvalue(self, array: np.ndarray):
        """A host array as an OrtValue where this device's sessions read it."""
        ort = onnxruntime()

        if self.on_gpu:
            return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda", 0)
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))

    def run_bound(self, name: str, inputs: dict) -> list:
        """OrtValues (or host arrays) in, OrtValues out, on this device: no host round trip on a GPU."""
        session = self.session(name)
        binding = session.io_binding()
        for key, value in inputs.items():
            binding.bind_ortvalue_input(
                key, value if not isinstance(value, np.ndarray) else self.ortvalue(value)
            )
        for output in session.get_outputs():
            binding.bind_output(output.name, "cuda" if self.on_gpu else "cpu")
        session.run_with_iobinding(binding)
        return binding.get_outputs()
