import pytest
import torch
from diffusers.utils import BaseOutput

from illume_core import Detokenizer
from illume_detokenizer import (
    SCHEDULERS,
    DetokenizerConfig,
    DetokenizerPipeline,
    attention_parameters,
    build_pipeline,
    from_sdxl,
    trainable_parameters,
)

D, N = 24, 16


def _pipe(preset="tiny", **overrides) -> DetokenizerPipeline:
    torch.manual_seed(0)
    pipe = build_pipeline(
        DetokenizerConfig.from_name(preset, **overrides), feature_dim=D, num_tokens=N
    )
    with torch.no_grad():  # an untrained conditioner would ignore its input; make it matter
        for p in pipe.conditioner.parameters():
            p.add_(0.5 * torch.randn_like(p))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _seeds(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def test_features_in_images_out_and_the_protocol():
    pipe = _pipe()
    assert isinstance(pipe, Detokenizer)
    out = pipe(
        torch.randn(2, N, D), num_inference_steps=3, guidance_scale=2.0, generator=_seeds(0, 1)
    )
    assert isinstance(out, BaseOutput) and out["images"] is out.images and out[1] is out.pixels
    images, pixels = pipe(torch.randn(2, N, D), num_inference_steps=3, return_dict=False)
    assert len(images) == 2 and pixels.shape == (2, 3, 16, 16)
    assert out.pixels.shape == (2, 3, 16, 16) and 0 <= out.pixels.min() <= out.pixels.max() <= 1
    assert [im.size for im in out.images] == [(16, 16)] * 2


def test_same_seed_same_image_and_a_batch_equals_single_runs(tmp_path):
    pipe = _pipe()
    features = torch.randn(4, N, D)
    batch = pipe(
        features, num_inference_steps=4, generator=_seeds(0, 1, 2, 3), output_type="pt"
    ).pixels
    singles = torch.cat(
        [
            pipe(
                features[i : i + 1], num_inference_steps=4, generator=_seeds(i), output_type="pt"
            ).pixels
            for i in range(4)
        ]
    )
    torch.testing.assert_close(batch, singles, atol=1e-5, rtol=1e-4)
    again = pipe(
        features, num_inference_steps=4, generator=_seeds(0, 1, 2, 3), output_type="pt"
    ).pixels
    assert torch.equal(batch, again)
    other = pipe(
        features, num_inference_steps=4, generator=_seeds(5, 6, 7, 8), output_type="pt"
    ).pixels
    assert not torch.allclose(batch, other)

    pipe.save_pretrained(tmp_path)
    loaded = DetokenizerPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    reloaded = loaded(
        features, num_inference_steps=4, generator=_seeds(0, 1, 2, 3), output_type="pt"
    ).pixels
    assert torch.equal(batch, reloaded)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_by_name_samples(name):
    pipe = _pipe().use_scheduler(name)
    out = pipe(
        torch.randn(1, N, D),
        num_inference_steps=5,
        guidance_scale=3.0,
        generator=_seeds(0),
        output_type="pt",
    )
    assert out.pixels.shape == (1, 3, 16, 16) and torch.isfinite(out.pixels).all()


def test_guidance_and_the_null_condition():
    pipe = _pipe()
    features = torch.randn(1, N, D)
    plain = pipe(
        features, num_inference_steps=3, guidance_scale=1.0, generator=_seeds(0), output_type="pt"
    ).pixels
    guided = pipe(
        features, num_inference_steps=3, guidance_scale=4.0, generator=_seeds(0), output_type="pt"
    ).pixels
    assert not torch.allclose(plain, guided)
    zero = _pipe(null_condition="zero")
    assert "null_features" not in dict(zero.conditioner.named_parameters())
    assert torch.equal(zero.conditioner.null_features, torch.zeros(N, D))
    drop = zero.conditioner(features, drop=torch.tensor([True]))
    torch.testing.assert_close(
        drop.encoder_hidden_states, zero.conditioner.unconditional(1).encoder_hidden_states
    )


def test_bad_inputs_are_named():
    pipe = _pipe()
    with pytest.raises(ValueError, match=rf"features must be \[B, {N}, {D}\]"):
        pipe(torch.randn(1, N + 1, D), num_inference_steps=2)
    with pytest.raises(TypeError, match="floating point"):
        pipe(torch.zeros(1, N, D, dtype=torch.long), num_inference_steps=2)
    with pytest.raises(ValueError, match="need the tokenizer"):
        pipe(codes=torch.zeros(1, 4, 4, dtype=torch.long), num_inference_steps=2)
    with pytest.raises(ValueError, match="either features"):
        pipe(num_inference_steps=2)
    with pytest.raises(ValueError, match="one per image"):
        pipe(torch.randn(2, N, D), num_inference_steps=2, generator=_seeds(0))
    with pytest.raises(ValueError, match="unknown scheduler 'plms'"):
        pipe.use_scheduler("plms")
    with pytest.raises(ValueError, match="null_condition must be one of"):
        _pipe(null_condition="random")


def test_sdxl_shaped_unet_from_a_local_directory_trains_attention_only(tmp_path, tiny_sdxl):
    tiny_sdxl(tmp_path / "sdxl")
    pipe = from_sdxl(tmp_path / "sdxl", feature_dim=D, num_tokens=N)
    pipe.set_progress_bar_config(disable=True)
    assert (
        pipe.conditioner.config.cross_attention_dim == 64
        and pipe.conditioner.config.pooled_dim == 32
    )
    assert pipe.image_size == 16  # 8 latent pixels, a VAE that halves

    params = trainable_parameters(pipe, "attention")
    attention = {id(p) for p in attention_parameters(pipe.unet)}
    assert attention and all(id(p) in attention for p in params if p in set(pipe.unet.parameters()))
    before = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    pixels = torch.rand(2, 3, 16, 16)
    x0 = pipe.to_model_space(pixels, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 500])
    noise = torch.randn_like(x0)
    noisy = pipe.scheduler.add_noise(x0, noise, t)
    loss = torch.nn.functional.mse_loss(
        pipe.predict(noisy, t, pipe.conditioner(torch.randn(2, N, D))), noise
    )
    loss.backward()
    optimizer.step()

    moved = still = 0
    for name, p in pipe.unet.named_parameters():
        if id(p) in attention:
            moved += not torch.equal(p, before[name])
        else:
            assert torch.equal(p, before[name]), f"{name} is not an attention weight but changed"
            still += 1
    assert moved == len(attention) and still > 0
    assert all(not p.requires_grad for p in pipe.vae.parameters())

    out = pipe(
        torch.randn(1, N, D),
        num_inference_steps=2,
        guidance_scale=2.0,
        generator=_seeds(0),
        output_type="pt",
    )
    assert out.pixels.shape == (1, 3, 16, 16)
    pipe.save_pretrained(tmp_path / "saved")
    loaded = DetokenizerPipeline.from_pretrained(tmp_path / "saved")
    assert loaded.vae is not None and loaded.unet.config.addition_embed_type == "text_time"


def test_text_time_unet_without_a_pooled_condition_is_refused():
    pipe = _pipe("tiny-sdxl")
    pooled_less = build_pipeline(
        DetokenizerConfig.from_name("tiny"), feature_dim=D, num_tokens=N
    ).conditioner
    with pytest.raises(ValueError, match="takes text_time conditions"):
        pipe.predict(
            torch.randn(1, 3, 16, 16), torch.tensor([1]), pooled_less(torch.randn(1, N, D))
        )


def test_pixel_unshuffle_is_exactly_invertible_and_saved(tmp_path):
    pipe = _pipe(pixel_unshuffle=2)
    assert pipe.unet.config.out_channels == 12 and pipe.unet.config.sample_size == 8
    # plus two coordinate channels and the feature grid's 32 channels
    assert pipe.unet.config.in_channels == 12 + 2 + 32
    assert pipe.conditioner(torch.randn(3, N, D)).spatial.shape == (3, 32, 4, 4)
    assert pipe.image_size == 16
    pixels = torch.rand(2, 3, 16, 16)
    assert pipe.to_model_space(pixels).shape == (2, 12, 8, 8)
    torch.testing.assert_close(pipe.to_pixels(pipe.to_model_space(pixels)), pixels)
    out = pipe(torch.randn(1, N, D), num_inference_steps=2, generator=_seeds(0), output_type="pt")
    assert out.pixels.shape == (1, 3, 16, 16)
    pipe.save_pretrained(tmp_path)
    assert DetokenizerPipeline.from_pretrained(tmp_path).config.pixel_unshuffle == 2


def test_a_misspelt_unet_config_key_is_an_error_naming_it(tmp_path):
    import json

    pipe = _pipe()
    pipe.save_pretrained(tmp_path / "d")
    DetokenizerPipeline.from_pretrained(tmp_path / "d")
    config = json.loads((tmp_path / "d" / "unet" / "config.json").read_text())
    config["layers_per_blok"] = 3
    (tmp_path / "d" / "unet" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="takes no layers_per_blok"):
        DetokenizerPipeline.from_pretrained(tmp_path / "d")
