"""Native TensorRT engines from the exported ONNX graphs (needs a CUDA GPU and `tensorrt`).

    engine = build_engine("runs/demo/onnx/decode.onnx", decoder_profiles(manifest, "decode"))
    session = TensorRTSession(engine)
    outputs = session.run({"input_ids": ids, ...})            # CUDA torch tensors in and out

Networks are strongly typed (TensorRT 11 always; TensorRT 10 by flag): precision is what the ONNX
graph says, so choose it at export. Each engine has one optimization profile covering the batch
and sequence ranges given, and is serialized under `<export dir>/trt_engines/` with the GPU's
name, the TensorRT version and a hash of the graph and profile in its file name: a different GPU,
TensorRT or graph builds a new engine, the same ones load the cached file. Tensors are bound by
name (`set_input_shape`, `set_tensor_address`) and run with `execute_async_v3` on torch's current
CUDA stream.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from illume_core import atomic_write_bytes

Shape = tuple[int, ...]


def _trt():
    try:
        import tensorrt
    except ImportError as error:
        raise ImportError(
            "TensorRT is not installed: pip install 'illume-runtime[tensorrt]' on a machine with a CUDA GPU"
        ) from error
    return tensorrt


def engine_path(
    onnx_path: Path, profiles: dict[str, tuple[Shape, Shape, Shape]], cache_dir: Path
) -> Path:
    import torch

    trt = _trt()
    digest = hashlib.sha256(
        Path(onnx_path).read_bytes() + json.dumps(profiles, sort_keys=True).encode()
    ).hexdigest()
    gpu = re.sub(r"[^A-Za-z0-9_.-]+", "_", torch.cuda.get_device_name())
    return cache_dir / f"{Path(onnx_path).stem}-{gpu}-trt{trt.__version__}-{digest[:16]}.engine"


def build_engine(
    onnx_path: str | os.PathLike,
    profiles: dict[str, tuple[Shape, Shape, Shape]],
    cache_dir: str | os.PathLike | None = None,
    workspace_gib: int = 8,
) -> Path:
    """The serialized engine of `onnx_path` for the (min, opt, max) shapes of each dynamic input,
    built once and cached (see the module docstring)."""
    trt = _trt()
    onnx_path = Path(onnx_path)
    cache = Path(cache_dir) if cache_dir is not None else onnx_path.parent / "trt_engines"
    cache.mkdir(parents=True, exist_ok=True)
    path = engine_path(onnx_path, profiles, cache)
    if path.is_file():
        return path
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if (
        hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
        and int(trt.__version__.split(".")[0]) < 11
    ):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_gib << 30)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in profiles.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(
            f"TensorRT could not build an engine for {onnx_path} (see its log above)"
        )
    atomic_write_bytes(path, bytes(serialized))
    return path


def decoder_profiles(
    manifest: dict, graph: str, max_batch: int = 32, max_sequence: int = 2048
) -> dict:
    """Optimization-profile shapes for the `prefill` or `decode` graph of an export manifest."""
    s = manifest["decoder"]
    kv = lambda past: (s["kv_heads"], past, s["head_dim"])  # noqa: E731
    if graph == "prefill":
        return {
            "inputs_embeds": (
                (1, 1, s["hidden"]),
                (2, 128, s["hidden"]),
                (max_batch, max_sequence, s["hidden"]),
            ),
            "attention_mask": ((1, 1), (2, 128), (max_batch, max_sequence)),
            "position_ids": ((1, 1), (2, 128), (max_batch, max_sequence)),
        }
    if graph == "decode":
        shapes = {
            "input_ids": ((1, 1), (2, 1), (max_batch, 1)),
            "attention_mask": ((1, 2), (2, 256), (max_batch, max_sequence)),
            "position_ids": ((1, 1), (2, 1), (max_batch, 1)),
        }
        if manifest.get("grid_embeddings"):
            shapes["grid_positions"] = shapes["input_ids"]
        for i in range(s["layers"]):
            for kind in ("key", "value"):
                shapes[f"past_key_values.{i}.{kind}"] = (
                    (1, *kv(1)),
                    (2, *kv(255)),
                    (max_batch, *kv(max_sequence - 1)),
                )
        return shapes
    raise ValueError(f"graph must be 'prefill' or 'decode', got {graph!r}")


class TensorRTSession:
    """A deserialized engine and its execution context; `run` takes and returns CUDA torch tensors."""

    def __init__(self, engine: str | os.PathLike):
        trt = _trt()
        self._trt = trt
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(
            Path(engine).read_bytes()
        )
        if self.engine is None:
            raise RuntimeError(
                f"{engine} is not an engine of this TensorRT ({trt.__version__}) and GPU: rebuild it"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [
            n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT
        ]

    def _dtype(self, name: str):
        import torch

        trt = self._trt
        table = {
            trt.float32: torch.float32,
            trt.float16: torch.float16,
            trt.bfloat16: torch.bfloat16,
            trt.int64: torch.int64,
            trt.int32: torch.int32,
            trt.bool: torch.bool,
        }
        return table[self.engine.get_tensor_dtype(name)]

    def run(self, feeds: dict) -> dict:
        import torch

        missing = set(self.inputs) - set(feeds)
        if missing:
            raise ValueError(f"missing inputs {sorted(missing)}; the engine takes {self.inputs}")
        for name in self.inputs:
            tensor = feeds[name].contiguous()
            feeds[name] = tensor
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self._dtype(name), device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError("TensorRT execution failed (see its log above)")
        return outputs
