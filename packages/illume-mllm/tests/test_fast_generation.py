"""The fast PyTorch loop against the reference (transformers generate + ImageTokenSampler)."""

import pytest
import torch

from illume_mllm import FlatDecoder, TorchImageGenerator, generate_image_tokens, prompt_batch
from illume_mllm.decoder import ATTENTION_FORMS, positions_from_mask

PROMPTS = ["a red circle", "a red circle above a blue square", "what is it"]


@pytest.mark.parametrize(
    "fuse, norm_form, attention_form",
    [
        (True, "rsqrt", "decomposed"),
        (False, "rsqrt", "decomposed"),
        (True, "divide", "decomposed"),
    ],
)
def test_flat_decoder_matches_the_transformers_forward_with_left_padding_and_images(
    mllm, edits, fuse, norm_form, attention_form
):
    model, processor = mllm
    short, _ = edits([(200, 30, 30)])
    long, _ = edits([(30, 30, 200)], "make it green and a blue square above a red circle")
    conversations = short + long  # left padding in the first row
    examples = [processor.encode_conversation(c, add_generation_prompt=True) for c in conversations]
    batch = prompt_batch(model, processor, examples)
    mask = batch["attention_mask"]
    assert (mask == 0).any()
    positions = positions_from_mask(mask)
    with torch.no_grad():
        want = model(**batch, position_ids=positions).logits[:, -1]
        decoder = FlatDecoder(model, fuse=fuse, norm_form=norm_form, attention_form=attention_form)
        assert decoder.fused == fuse
        embeds = model.prompt_embeddings(batch["input_ids"], batch["pixel_values"])
        s = decoder.shape
        empty = [(torch.zeros(2, s.kv_heads, 0, s.head_dim),) * 2 for _ in range(s.layers)]
        hidden, presents = decoder.forward_past(embeds, positions, mask, empty)
        got = decoder.logits(hidden)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert presents[0][0].shape == (2, s.kv_heads, mask.shape[1], s.head_dim)
    # a decode step after those presents, as the ONNX decode graph takes one
    step_mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], dim=1)
    token = torch.tensor([[5], [6]])
    with torch.no_grad():
        want = model(
            input_ids=torch.cat([batch["input_ids"], token], 1),
            pixel_values=batch["pixel_values"],
            attention_mask=step_mask,
            position_ids=positions_from_mask(step_mask),
        ).logits[:, -1]
        step_positions = positions_from_mask(step_mask)[:, -1:]
        hidden, _ = decoder.forward_past(decoder.embed(token), step_positions, step_mask, presents)
    torch.testing.assert_close(decoder.logits(hidden), want, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="norm_form must be one of"):
        FlatDecoder(model, norm_form="sqrt")
    with pytest.raises(ValueError, match="attention_form must be one of"):
        FlatDecoder(model, attention_form="fused")
    # this model shares key/value heads between queries (GQA), which MultiHeadAttention cannot
    with pytest.raises(ValueError, match="use attention_form='decomposed'"):
        FlatDecoder(model, attention_form="contrib")


def test_the_contrib_attention_form_computes_the_decomposed_forms_logits_and_presents(tiny_stages):
    """The operators the exporter maps to ONNX Runtime's fused kernels, run by PyTorch: the same
    prefill (left padding) and decode step as the decomposed form."""
    from illume_mllm import IllumeForConditionalGeneration

    model = IllumeForConditionalGeneration.from_pretrained(tiny_stages / "mllm").eval()
    decomposed, contrib = (FlatDecoder(model, attention_form=f) for f in ATTENTION_FORMS)
    s = decomposed.shape
    assert s.kv_heads == s.heads
    torch.manual_seed(0)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    embeds = torch.randn(2, 6, s.hidden)
    empty = [(torch.zeros(2, s.kv_heads, 0, s.head_dim),) * 2 for _ in range(s.layers)]
    step_mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], dim=1)
    token = torch.tensor([[3], [4]])
    outputs = []
    with torch.no_grad():
        for decoder in (decomposed, contrib):
            hidden, presents = decoder.forward_past(embeds, positions_from_mask(mask), mask, empty)
            step, step_presents = decoder.forward_past(
                decoder.embed(token), positions_from_mask(step_mask)[:, -1:], step_mask, presents
            )
            outputs.append((decoder.logits(hidden), decoder.logits(step), step_presents[-1][0]))
    for want, got in zip(*outputs, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "guidance, temperature, top_k, top_p",
    [(3.0, 1.0, None, None), (2.0, 0.8, 8, None), (1.0, 1.0, None, 0.9), (5.0, 0.0, None, None)],
)
def test_same_seed_same_codes_as_the_reference_for_text_to_image(
    mllm, t2i, guidance, temperature, top_k, top_p
):
    model, processor = mllm
    conversations, unconditional = t2i(processor, PROMPTS)
    fast = TorchImageGenerator(model, processor)
    kwargs = dict(guidance=guidance, temperature=temperature, top_k=top_k, top_p=top_p)
    want = generate_image_tokens(
        model,
        processor,
        conversations,
        unconditional,
        generator=torch.Generator().manual_seed(7),
        **kwargs,
    )
    got = fast(conversations, unconditional, generator=torch.Generator().manual_seed(7), **kwargs)
    assert got.shape == (3, *processor.config.image_grid)
    assert torch.equal(got, want)


def test_same_seed_same_codes_as_the_reference_for_edits_and_the_workspace_is_reused(mllm, edits):
    model, processor = mllm
    conversations, unconditional = edits([(200, 30, 30), (30, 200, 30)])
    fast = TorchImageGenerator(model, processor)
    want = generate_image_tokens(
        model,
        processor,
        conversations,
        unconditional,
        guidance=2.0,
        generator=torch.Generator().manual_seed(3),
    )
    for _ in range(2):  # the second call reuses the cache of the first: nothing of it leaks
        got = fast(
            conversations, unconditional, guidance=2.0, generator=torch.Generator().manual_seed(3)
        )
        assert torch.equal(got, want)
    other = fast(
        conversations, unconditional, guidance=2.0, generator=torch.Generator().manual_seed(4)
    )
    assert not torch.equal(other, want)


def test_guidance_without_unconditional_prompts_is_refused(mllm, t2i):
    model, processor = mllm
    conversations, _ = t2i(processor, PROMPTS)
    with pytest.raises(ValueError, match="unconditional"):
        TorchImageGenerator(model, processor)(conversations, guidance=3.0)


@pytest.mark.parametrize("layers", [-2, [0, -2]])
def test_vision_features_match_llava_for_one_layer_and_a_list(mllm, layers):
    """A list of layers is concatenated per patch (a tokenizer on the patch embeddings, understanding
    on a deeper layer beside them): the runtime's vision path must read what transformers reads."""
    from illume_mllm import IllumeForConditionalGeneration
    from illume_mllm.decoder import vision_features

    model, _ = mllm
    config = model.config.to_dict() | {"vision_feature_layer": layers}
    torch.manual_seed(0)
    built = IllumeForConditionalGeneration(type(model.config).from_dict(config)).eval()
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        want = torch.stack(built.model.get_image_features(pixels).pooler_output)  # [I, N, D]
        torch.testing.assert_close(vision_features(built, pixels), want)


def test_grid_embeddings_same_codes_as_the_reference(mllm, grid_mllm, t2i, draws_the_reference):
    """Each fed code carries its cell, as transformers' generate gives it (IllumeConfig)."""
    model, processor = grid_mllm
    conversations, unconditional = t2i(processor, PROMPTS)
    fast = TorchImageGenerator(model, processor)
    settings = ({"guidance": 3.0}, {"guidance": 1.0, "temperature": 0.0})
    got = draws_the_reference(fast, model, processor, conversations, unconditional, settings)
    plain = TorchImageGenerator(mllm[0], processor)(conversations, temperature=0.0)
    assert not torch.equal(got, plain)  # the embeddings are used


def _two_sample_chi2_rejects(a: torch.Tensor, b: torch.Tensor, categories: int) -> bool:
    """Whether codes a and b [N] (equal N) differ in distribution at p < 1e-4: the two-sample
    chi-square statistic against its critical value (Wilson-Hilferty)."""
    ca, cb = (torch.bincount(x, minlength=categories).double() for x in (a, b))
    used = (ca + cb) > 0
    stat = float(((ca - cb)[used] ** 2 / (ca + cb)[used]).sum())
    df = int(used.sum()) - 1
    z = 3.719  # the standard normal's 1 - 1e-4 quantile
    critical = df * (1 - 2 / (9 * df) + z * (2 / (9 * df)) ** 0.5) ** 3
    return stat > critical


def _draw_many(fast, processor, t2i, decoding, seed, images=480, batch=8, **kwargs):
    conversations, unconditional = t2i(processor, ["a red circle above a blue square"] * batch)
    generator = torch.Generator().manual_seed(seed)
    out = [
        fast(conversations, unconditional, generator=generator, decoding=decoding, window=5,
             guidance=2.0, **kwargs)
        for _ in range(images // batch)
    ]  # fmt: skip
    return torch.cat(out).flatten(1)  # [images, h * w]


def test_speculative_jacobi_decoding_draws_what_plain_decoding_draws(mllm, t2i, monkeypatch):
    """SJD's acceptance rule keeps each code's distribution: at every grid cell the codes of 480
    SJD images and 480 plain ones pass a two-sample chi-square test; with the rule broken
    (every draft accepted) the test rejects them, so it can tell."""
    import illume_mllm.sampling as sampling

    model, processor = mllm
    fast = TorchImageGenerator(model, processor)
    k = processor.config.codebook_size
    plain = _draw_many(fast, processor, t2i, "plain", seed=1)
    sjd = _draw_many(fast, processor, t2i, "sjd", seed=2)
    assert not any(
        _two_sample_chi2_rejects(plain[:, c], sjd[:, c], k) for c in range(plain.shape[1])
    )

    real_uniform = sampling._uniform
    monkeypatch.setattr(sampling, "_uniform", lambda b, n, g=None: real_uniform(b, n, g) * 0)
    broken = _draw_many(fast, processor, t2i, "sjd", seed=2)
    assert any(
        _two_sample_chi2_rejects(plain[:, c], broken[:, c], k) for c in range(plain.shape[1])
    )


def test_sjd_greedy_codes_are_plain_greedy_codes_in_fewer_passes(mllm, t2i):
    model, processor = mllm
    fast = TorchImageGenerator(model, processor)
    conversations, unconditional = t2i(processor, PROMPTS[:1])
    kwargs = dict(guidance=3.0, temperature=0.0, generator=torch.Generator().manual_seed(0))
    want = fast(conversations, unconditional, **kwargs)
    plain_passes = fast.forward_passes
    got = fast(conversations, unconditional, decoding="sjd", window=8, **kwargs)
    assert torch.equal(got, want)
    assert fast.forward_passes <= plain_passes
    with pytest.raises(ValueError, match="decoding must be one of"):
        fast(conversations, unconditional, decoding="jacobi")
    # a batch of one generator per image, as a server draws
    per_image = [torch.Generator().manual_seed(s) for s in (1, 2)]
    two, two_uncond = t2i(processor, PROMPTS[:2])
    assert fast(two, two_uncond, guidance=2.0, generator=per_image, decoding="sjd").shape[0] == 2


@pytest.mark.parametrize("rows", [1, 16])
def test_the_one_sample_draw_is_torch_multinomials_draw(rows):
    """Every image sampler draws through `multinomial_one`: it must stay torch.multinomial's draw
    for the same generator state (with zeros from top-k among the probabilities), while a draw
    from other probabilities with the same generator state differs."""
    from illume_mllm.generation import code_probs, multinomial_one

    logits = torch.randn(300, rows, 512, generator=torch.Generator().manual_seed(1))
    ours, theirs = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    differs_from_other_probs = False
    for step in logits:
        probs = code_probs(step, None, top_k=20 if rows == 16 else None)
        state = ours.get_state()
        other = multinomial_one(probs.flip(-1), ours)
        ours.set_state(state)
        drawn = multinomial_one(probs, ours)
        assert torch.equal(drawn, torch.multinomial(probs, 1, generator=theirs)[:, 0])
        differs_from_other_probs |= not torch.equal(drawn, other)
    assert differs_from_other_probs
