"""ONNX Runtime, which comes as one of two wheels (onnxruntime, onnxruntime-gpu) that install the
same `onnxruntime` module: the import, and what to tell a user whose install lacks a provider."""

from __future__ import annotations


def onnxruntime():
    """The onnxruntime module, or an ImportError saying which wheel to install."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(
            "ONNX Runtime is not installed: pip install 'illume-runtime[cpu]', or on a CUDA "
            "machine 'illume-runtime[gpu]' (onnxruntime-gpu, in place of onnxruntime)"
        ) from None
    return onnxruntime


def missing_provider(wanted: str, available: set[str]) -> str:
    """Why ONNX Runtime lacks a GPU provider, and the fix. onnxruntime and onnxruntime-gpu install
    the same `onnxruntime` module: with both, whichever came last wins, often the CPU one."""
    from importlib.metadata import PackageNotFoundError, distribution

    def installed(name: str) -> bool:
        try:
            distribution(name)
        except PackageNotFoundError:
            return False
        return True

    have = f"ONNX Runtime here has no {wanted} (available: {sorted(available)})"
    if installed("onnxruntime") and installed("onnxruntime-gpu"):
        return (
            f"{have}: onnxruntime and onnxruntime-gpu are both installed and the CPU one hides the "
            "GPU's; run `pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu`"
        )
    if installed("onnxruntime-gpu"):
        return f"{have}: onnxruntime-gpu is installed, but finds no CUDA (or TensorRT) libraries"
    return (
        f"{have}: on a CUDA machine run `pip uninstall -y onnxruntime && pip install "
        "'illume-runtime[gpu]'` (onnxruntime-gpu replaces onnxruntime), or use device='cpu'"
    )
