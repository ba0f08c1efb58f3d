import pytest


@pytest.mark.gpu
def test_gpu_marker_runs_only_with_cuda():
    import torch

    assert torch.cuda.is_available()  # reached only where CUDA is present; skipped elsewhere
