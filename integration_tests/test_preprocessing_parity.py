"""Training and inference see the same pixels: the stages' uint8 batches (`illume_trainer.data.
to_tensor` then `Normalizer`) against the encoder's own image processor, which the pipeline uses
(`SemanticTokenizer.preprocess`), tensor for tensor, for images at, above and below the encoder's
size, square or not. A difference here is train/serve skew: the model would be served other
inputs than it learned from."""

import numpy as np
import pytest
import torch
from PIL import Image

from illume_eval.shapes.foundations import foundation
from illume_tokenizer import VisionEncoder, build_siglip, siglip_image_processor
from illume_trainer.data import to_tensor
from illume_trainer.stages.common import Normalizer


def _encoders(tmp_path):
    shipped = VisionEncoder.from_pretrained(foundation("encoder"))
    # another size, mean and std than the shipped one's
    build_siglip("tiny", vocab_size=40).save_pretrained(tmp_path / "tiny")
    siglip_image_processor(32, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)).save_pretrained(
        tmp_path / "tiny"
    )
    return {"shipped": shipped, "tiny": VisionEncoder.from_pretrained(tmp_path / "tiny")}


@pytest.mark.parametrize("shape", [(36, 36), (32, 32), (64, 64), (20, 20), (48, 30)])
def test_training_and_inference_preprocess_images_identically(tmp_path, shape):
    rng = np.random.default_rng(sum(shape))
    image = Image.fromarray(rng.integers(0, 256, (shape[1], shape[0], 3), dtype=np.uint8))
    for name, encoder in _encoders(tmp_path).items():
        size = encoder.image_processor.size["height"]
        served = encoder.preprocess([image])
        trained = Normalizer.for_processor(encoder.image_processor)(to_tensor(image, size)[None])
        assert served.shape == trained.shape == (1, 3, size, size), name
        assert torch.equal(served, trained), (name, (served - trained).abs().max().item())
