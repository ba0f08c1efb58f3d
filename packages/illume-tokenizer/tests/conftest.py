import pytest
import torch

from illume_tokenizer import build_siglip, siglip_image_processor


@pytest.fixture(scope="session")
def siglip_dir(tmp_path_factory):
    """A tiny SigLIP (vision + text) built with transformers and saved like a downloaded checkpoint."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("siglip")
    build_siglip("tiny", vocab_size=40).save_pretrained(path)
    siglip_image_processor(32).save_pretrained(path)
    return path
