import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image

from illume_core import VisionTokenizer
from illume_tokenizer import SemanticTokenizer, TokenizerConfig, VectorQuantizer, VisionEncoder


def _tokenizer(siglip_dir, **overrides) -> SemanticTokenizer:
    torch.manual_seed(0)
    return SemanticTokenizer(
        TokenizerConfig.from_name("tiny", **overrides), VisionEncoder.from_pretrained(siglip_dir)
    )


def test_encoder_loads_by_path_with_its_processor(siglip_dir):
    encoder = VisionEncoder.from_pretrained(siglip_dir)
    assert type(encoder.model).__name__ == "SiglipVisionModel"  # the text tower is not loaded
    assert encoder.grid == (4, 4) and encoder.dim == 32
    pixels = encoder.preprocess([Image.new("RGB", (50, 40), (255, 0, 0))])
    assert pixels.shape == (1, 3, 32, 32) and torch.allclose(
        pixels[0, :, 0, 0], torch.tensor([1.0, -1.0, -1.0])
    )
    assert encoder(pixels).shape == (1, 16, 32)
    penultimate = VisionEncoder.from_pretrained(siglip_dir, feature_layer=-2)
    assert not torch.allclose(penultimate(pixels), encoder(pixels))


def test_clip_class_token_is_dropped(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    CLIPVisionModel(config).save_pretrained(tmp_path)
    encoder = VisionEncoder.from_pretrained(tmp_path)
    assert encoder(torch.randn(2, 3, 32, 32)).shape == (2, 16, 32)


def test_protocol_round_trip_and_reload(siglip_dir, tmp_path):
    tokenizer = _tokenizer(siglip_dir).eval()
    assert isinstance(tokenizer, VisionTokenizer)
    pixels = torch.randn(3, 3, 32, 32)
    tokens = tokenizer.encode(pixels)
    assert (
        tokens.codes.shape == (3, 4, 4)
        and tokens.codes.dtype == torch.int64
        and tokens.grid == (4, 4)
    )
    assert tokenizer.features(pixels).shape == (3, 16, 32)
    assert tokenizer.decode_features(tokens.codes).shape == (3, 16, 32)
    tokenizer.save_pretrained(tmp_path / "tok")
    reloaded = SemanticTokenizer.from_pretrained(tmp_path / "tok")
    assert torch.equal(reloaded.encode(pixels).codes, tokens.codes)
    assert torch.equal(
        reloaded.decode_features(tokens.codes), tokenizer.decode_features(tokens.codes)
    )
    assert (tmp_path / "tok" / "encoder" / "preprocessor_config.json").is_file()


def test_encode_never_moves_the_codebook(siglip_dir):
    tokenizer = _tokenizer(siglip_dir).train()
    before = tokenizer.quantizer.codebook.clone()
    pixels = torch.randn(2, 3, 32, 32)
    first = tokenizer.encode(pixels).codes
    assert torch.equal(tokenizer.encode(pixels).codes, first)
    assert torch.equal(tokenizer.quantizer.codebook, before)


def test_codes_do_not_depend_on_the_callers_autocast(siglip_dir):
    """A stage trained in bf16-mixed must learn the codes the float32 pipeline reads: nearest-code
    distances in bf16 flip near ties (70 of these 4,096 lookups; 0.4% of the shapes tokenizer's
    codes). encode() also keeps the encoder's features out of the caller's autocast."""
    torch.manual_seed(0)
    quantizer = VectorQuantizer(1024, 32)
    z = torch.randn(2, 2048, 32)
    tokenizer = _tokenizer(siglip_dir, codebook_size=1024, code_dim=32)
    pixels = torch.randn(64, 3, 32, 32)
    expected = quantizer.lookup(z), tokenizer.encode(pixels).codes
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(quantizer.lookup(z), expected[0])
        assert torch.equal(tokenizer.encode(pixels).codes, expected[1])


def test_input_validation(siglip_dir):
    tokenizer = _tokenizer(siglip_dir)
    with pytest.raises(ValueError, match=r"shape \[B, 3, 32, 32\], got \[2, 1, 32, 32\]"):
        tokenizer.encode(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"got \[2, 3, 64, 64\]"):
        tokenizer.encode(torch.randn(2, 3, 64, 64))
    with pytest.raises(TypeError, match="floating point"):
        tokenizer.encode(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 64\), got \[0, 64\]"):
        tokenizer.decode_features(torch.tensor([[0] * 15 + [64]]))
    with pytest.raises(TypeError, match="int64"):
        tokenizer.decode_features(torch.zeros(1, 4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"codes must be \[B, 4, 4\]"):
        tokenizer.decode_features(torch.zeros(1, 3, 3, dtype=torch.long))


def test_one_training_step_moves_only_quantizer_and_decoder(siglip_dir):
    tokenizer = _tokenizer(siglip_dir, quantizer_update="straight_through").train()
    encoder_before = {k: v.clone() for k, v in tokenizer.encoder.state_dict().items()}
    trainable = [p for n, p in tokenizer.named_parameters() if p.requires_grad]
    assert trainable and all(
        not n.startswith("encoder.") for n, p in tokenizer.named_parameters() if p.requires_grad
    )
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    decoder_before = tokenizer.decoder.proj_out.weight.clone()
    out = tokenizer(torch.randn(4, 3, 32, 32))
    out.loss.backward()
    optimizer.step()
    assert not torch.equal(tokenizer.decoder.proj_out.weight, decoder_before)
    for k, v in tokenizer.encoder.state_dict().items():
        assert torch.equal(v, encoder_before[k]), k


def test_determinism_across_processes(siglip_dir, tmp_path):
    tokenizer = _tokenizer(siglip_dir).eval()
    tokenizer.save_pretrained(tmp_path / "tok")
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    torch.save(pixels, tmp_path / "pixels.pt")
    script = textwrap.dedent(f"""
        import torch
        from illume_tokenizer import SemanticTokenizer
        tok = SemanticTokenizer.from_pretrained({str(tmp_path / "tok")!r})
        pixels = torch.load({str(tmp_path / "pixels.pt")!r}, weights_only=True)
        print(tok.encode(pixels).codes.reshape(-1).tolist())
    """)
    runs = [
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    ]
    assert runs[0] == runs[1] == str(tokenizer.encode(pixels).codes.reshape(-1).tolist()) + "\n"


def _clustered(n: int, clusters: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=g) * 3
    return centres[torch.randint(0, clusters, (n,), generator=g)] + 0.1 * torch.randn(
        n, dim, generator=g
    )


@pytest.mark.parametrize("update", ["ema", "straight_through"])
def test_dead_code_restarts_rescue_a_collapsed_codebook(update):
    """With every code initialised to the same point, all inputs map to one code (collapse);
    restarts re-seed the dead codes from the data and usage climbs back."""
    torch.manual_seed(0)
    data = _clustered(4096, 64, 8, seed=1)

    def train(restarts: bool) -> VectorQuantizer:
        vq = VectorQuantizer(
            64,
            8,
            update=update,
            l2_normalize=False,
            init="collapsed",
            dead_threshold=0.05,
            decay=0.9,
        )
        vq.restart_dead_codes = restarts
        optimizer = (
            torch.optim.SGD(vq.parameters(), lr=0.5) if update == "straight_through" else None
        )
        for _ in range(80):
            batch = data[torch.randint(0, len(data), (256,))]
            out = vq(batch[None])
            if optimizer:
                optimizer.zero_grad()
                out.loss.backward()
                optimizer.step()
        return vq

    def used(vq):
        return len(torch.unique(vq.lookup(data[None])))

    assert used(train(restarts=False)) <= 8  # collapsed: a handful of codes serve everything
    assert used(train(restarts=True)) >= 0.8 * 64


def test_error_weighted_restarts_serve_rare_inputs_better():
    """One point holds 80% of the inputs (a patch-local tokenizer's background), 127 rare clusters
    the rest, 64 codes: restarts seeded by quantization error (k-means++) put the codes where
    the rare inputs are; uniform seeds keep landing on the common point."""
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(128, 8, generator=g) * 3
    share = torch.full((128,), 0.2 / 127)
    share[0] = 0.8
    cluster = torch.multinomial(share, 20000, replacement=True, generator=g)
    data = centres[cluster] + 0.05 * torch.randn(20000, 8, generator=g)

    def rare_error(restart: str) -> float:
        torch.manual_seed(0)
        vq = VectorQuantizer(
            64, 8, l2_normalize=False, dead_threshold=0.03, decay=0.95, restart=restart
        )
        for _ in range(600):
            vq(data[torch.randint(0, len(data), (256,))][None])
        codes = vq.lookup(data[None])[0]
        error = (vq.embed(codes) - data).pow(2).sum(1)
        return float(error[cluster != 0].mean())

    assert rare_error("error") < 0.85 * rare_error("random")  # measured: 10.5 against 14.3
    with pytest.raises(ValueError, match="restart must be"):
        VectorQuantizer(8, 4, restart="farthest")


def test_paper_scale_config_instantiates_on_meta(tmp_path):
    """SigLIP-so400m-shaped encoder (config only, no weights) + the illume-7b tokenizer preset."""
    from transformers import SiglipVisionConfig

    from illume_tokenizer import SIGLIP_SO400M_VISION

    SiglipVisionConfig(**SIGLIP_SO400M_VISION).save_pretrained(tmp_path)
    with torch.device("meta"):
        tokenizer = SemanticTokenizer(
            TokenizerConfig.from_name("illume-7b"),
            VisionEncoder.from_pretrained(tmp_path, feature_layer=-2),
        )
    assert tokenizer.grid == (27, 27) and tokenizer.codebook_size == 16384
    assert tokenizer.decoder.proj_out.weight.device.type == "meta"
    params = sum(p.numel() for p in tokenizer.encoder.parameters())
    assert 380e6 < params < 440e6  # so400m's vision tower


def test_codes_of_patch_embeddings_that_reconstruct_a_deeper_layer(siglip_dir, tmp_path):
    # codes quantize layer 0 and the decoder rebuilds the penultimate layer: each code is a
    # function of its own patch, what the codes stand for is the deeper layer's
    encoder = VisionEncoder.from_pretrained(siglip_dir, feature_layer=0)
    torch.manual_seed(0)
    tokenizer = SemanticTokenizer(TokenizerConfig.from_name("tiny", target_layer=-2), encoder)
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 32, 32)
    changed = pixels.clone()
    changed[:, :, :8, :8] = torch.randn(2, 3, 8, 8)  # the first of the 4x4 patches only
    with torch.no_grad():
        deeper = VisionEncoder.from_pretrained(siglip_dir, feature_layer=-2)
        assert not torch.allclose(deeper(pixels)[:, 1:], deeper(changed)[:, 1:])  # mixed there
        before, after = (tokenizer.encode(p).codes.flatten(1) for p in (pixels, changed))
    assert torch.equal(before[:, 1:], after[:, 1:])  # no other patch's code moves
    # what it learns to reconstruct, and calls its features, is the deeper layer
    assert torch.allclose(tokenizer.features(pixels), deeper(pixels))
    out = tokenizer(pixels)
    assert torch.allclose(out.features, deeper(pixels))
    out.loss.backward()
    assert tokenizer.decoder.proj_out.weight.grad is not None
    with pytest.raises(ValueError, match="give pixels, not features"):
        tokenizer(features=encoder(pixels))
    tokenizer.save_pretrained(tmp_path / "tok")
    reloaded = SemanticTokenizer.from_pretrained(tmp_path / "tok")
    assert (reloaded.config.feature_layer, reloaded.config.target_layer) == (0, -2)
    assert torch.equal(reloaded.encode(pixels).codes, tokenizer.encode(pixels).codes)
