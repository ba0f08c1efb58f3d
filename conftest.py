"""Shared pytest hooks for every package's tests and the integration tests."""

import pytest


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip cleanly where CUDA is not available."""
    gpu_tests = [item for item in items if "gpu" in item.keywords]
    if not gpu_tests:
        return
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in gpu_tests:
            item.add_marker(skip)
