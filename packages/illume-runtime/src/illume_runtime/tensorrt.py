"""Native TensorRT engines from the exported ONNX graphs (needs a CUDA GPU and `tensorrt`).

    engine = build_engine("runs/demo/onnx/decode.onnx", graph_profiles(export_dir, manifest, "decode"))
    session = TensorRTSession(engine)
    outputs = session.run({"input_ids": ids, ...})            # CUDA torch tensors in and out

    models = TensorRTModels("runs/demo/onnx")                 # every graph, engines built on use
    codes = OnnxImageGenerator(models)(conversations, unconditional, guidance=3.0, generator=g)

`TensorRTModels` answers as `OnnxModels` does (`run`, `run_bound`), so the generation loop of
onnx_generation.py runs on TensorRT engines unchanged: `IllumePipeline.use_runtime("tensorrt")`
and `illume generate --runtime tensorrt`. Profiles come from each graph's dynamic axes
(`graph_profiles`): batch up to `max_batch` rows, sequences up to `max_sequence` tokens.

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


#: (min, opt) of a dynamic axis by its name in the export manifest; the max is max_batch or the
#: sequence limit. A KV cache's past is one shorter than the attention mask that covers it.
_AXES = {
    "batch": (1, 2),
    "images": (1, 2),
    "sequence": (1, 128),
    "past_sequence": (1, 255),
    "past_sequence + 1": (2, 256),
    "window": (1, 16),
    "past_sequence + window": (2, 256),
}


def graph_profiles(
    directory: str | os.PathLike,
    manifest: dict,
    name: str,
    max_batch: int = 32,
    max_sequence: int = 2048,
) -> dict[str, tuple[Shape, Shape, Shape]]:
    """Optimization-profile shapes of every input of graph `name` of an export: its static dims
    read from the ONNX file, its dynamic ones (the manifest's axis names) from `_AXES`."""
    import onnx

    spec = manifest["graphs"][name]
    graph = onnx.load(str(Path(directory) / spec["file"]), load_external_data=False).graph
    static = {
        i.name: [
            d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim
        ]
        for i in graph.input
    }
    profiles = {}
    for input_name in spec["inputs"]:
        dynamic = {
            int(axis): axis_name for axis, axis_name in spec["dynamic"].get(input_name, {}).items()
        }
        low, opt, high = [], [], []
        for axis, size in enumerate(static[input_name]):
            if axis not in dynamic:
                if size is None:
                    raise ValueError(f"{spec['file']}: {input_name} axis {axis} has no size")
                low.append(size), opt.append(size), high.append(size)
                continue
            axis_name = dynamic[axis]
            if axis_name not in _AXES:
                raise ValueError(f"{spec['file']}: no profile for the dynamic axis {axis_name!r}")
            least, typical = _AXES[axis_name]
            most = max_batch if axis_name in ("batch", "images") else max_sequence
            most -= axis_name == "past_sequence"
            low.append(least), opt.append(min(typical, most)), high.append(most)
        profiles[input_name] = (tuple(low), tuple(opt), tuple(high))
    return profiles


class CudaValue:
    """A graph's output on the GPU, as an OrtValue is for ONNX Runtime: fed back as an input
    where it lies, copied to the host by `numpy()` only when asked."""

    def __init__(self, tensor):
        self.tensor = tensor

    def numpy(self):
        return self.tensor.cpu().numpy()


class TensorRTModels:
    """The graphs of an export directory as native TensorRT engines (built, or loaded from the
    cache, on first use), answering as `OnnxModels` does. `max_batch` / `max_sequence`: the
    largest batch and prompt-plus-drawing length the engines take."""

    on_gpu = True

    def __init__(self, directory: str | os.PathLike, max_batch: int = 32, max_sequence: int = 2048):
        import torch

        from illume_core import read_json

        from .export import MANIFEST

        self.directory = Path(directory)
        if not (self.directory / MANIFEST).is_file():
            raise FileNotFoundError(
                f"{self.directory} has no {MANIFEST}: export a pipeline first (`illume export --model DIR --out DIR --portable`)"
            )
        self.manifest = read_json(self.directory / MANIFEST)
        if self.manifest.get("attention_form") == "contrib":
            raise ValueError(
                f"{self.directory}: its decoder graphs use ONNX Runtime's contrib attention, "
                "which TensorRT cannot parse; export with `illume export --portable` "
                "(export_pipeline(..., portable=True))"
            )
        if self.manifest.get("decoder_weights", "float32") != "float32":
            raise ValueError(
                f"{self.directory}: its decoder weights are {self.manifest['decoder_weights']} "
                "(ONNX Runtime's MatMulNBits), which TensorRT cannot parse; export float32 "
                "portable graphs (`illume export --portable`)"
            )
        _trt()
        if not torch.cuda.is_available():
            raise RuntimeError("TensorRT engines run on a CUDA GPU, and this machine has none")
        self.max_batch, self.max_sequence = max_batch, max_sequence
        self._sessions: dict[str, TensorRTSession] = {}

    def session(self, name: str) -> TensorRTSession:
        if name not in self._sessions:
            graphs = self.manifest["graphs"]
            if name not in graphs:
                raise KeyError(f"no graph {name!r} in the export; it lists {sorted(graphs)}")
            profiles = graph_profiles(
                self.directory, self.manifest, name, self.max_batch, self.max_sequence
            )
            engine = build_engine(self.directory / graphs[name]["file"], profiles)
            self._sessions[name] = TensorRTSession(engine)
        return self._sessions[name]

    def run_bound(self, name: str, inputs: dict) -> list[CudaValue]:
        """Host arrays or CudaValues in, CudaValues out (the manifest's output order)."""
        import torch

        feeds = {
            key: value.tensor if isinstance(value, CudaValue) else torch.from_numpy(value).cuda()
            for key, value in inputs.items()
        }
        out = self.session(name).run(feeds)
        return [CudaValue(out[n]) for n in self.manifest["graphs"][name]["outputs"]]

    def run(self, name: str, **inputs) -> list:
        """Host arrays in, host arrays out."""
        return [value.numpy() for value in self.run_bound(name, inputs)]


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
