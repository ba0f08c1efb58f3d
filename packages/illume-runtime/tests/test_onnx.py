"""Export of a pipeline directory and ONNX Runtime against PyTorch."""

import json

import numpy as np
import onnx
import pytest
import torch

from illume_core import Message
from illume_detokenizer import DetokenizerPipeline
from illume_mllm import (
    IllumeForConditionalGeneration,
    IllumeProcessor,
    generate_text,
)
from illume_runtime import OnnxImageGenerator, OnnxModels, export_pipeline
from illume_tokenizer import SemanticTokenizer


@pytest.fixture(scope="module")
def exported(pipeline_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "graphs"
    manifest = export_pipeline(pipeline_dir, out)
    return out, manifest


@pytest.fixture(scope="module")
def portable(pipeline_dir, tmp_path_factory):
    """The export in standard ONNX operators only, as TensorRT parses it."""
    out = tmp_path_factory.mktemp("onnx") / "portable"
    manifest = export_pipeline(pipeline_dir, out, portable=True)
    return out, manifest


def _ops(path) -> list[tuple[str, str]]:
    return [
        (n.domain, n.op_type) for n in onnx.load(str(path), load_external_data=False).graph.node
    ]


@pytest.fixture(scope="module")
def reference(pipeline_dir):
    return (
        SemanticTokenizer.from_pretrained(pipeline_dir / "tokenizer").eval(),
        IllumeForConditionalGeneration.from_pretrained(pipeline_dir / "mllm").eval(),
        IllumeProcessor.from_pretrained(pipeline_dir / "mllm"),
        DetokenizerPipeline.from_pretrained(pipeline_dir / "detokenizer"),
    )


def test_every_graph_is_listed_checked_and_named_by_the_kv_convention(exported):
    out, manifest = exported
    assert set(manifest["graphs"]) == {
        "tokenizer_encoder",
        "tokenizer_decoder",
        "vision_adapter",
        "embeddings",
        "prefill",
        "decode",
        "decode_window",
        "conditioner",
        "unet_step",
    }
    assert json.loads((out / "manifest.json").read_text()) == manifest
    for spec in manifest["graphs"].values():
        onnx.checker.check_model(str(out / spec["file"]), full_check=True)
    layers = manifest["decoder"]["layers"]
    decode = onnx.load(str(out / "decode.onnx"), load_external_data=False)
    inputs, outputs = [i.name for i in decode.graph.input], [o.name for o in decode.graph.output]
    assert inputs[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert inputs[3:] == [
        f"past_key_values.{i}.{k}" for i in range(layers) for k in ("key", "value")
    ]
    assert outputs == ["logits"] + [
        f"present.{i}.{k}" for i in range(layers) for k in ("key", "value")
    ]
    # each layer's rotary embeddings (queries, keys) and attention as ONNX Runtime's fused kernels
    assert manifest["attention_form"] == "contrib"
    for graph in ("prefill", "decode", "decode_window"):
        ops = _ops(out / manifest["graphs"][graph]["file"])
        assert ops.count(("com.microsoft", "MultiHeadAttention")) == layers
        assert ops.count(("com.microsoft", "RotaryEmbedding")) == 2 * layers
        assert ("", "Softmax") not in ops


@pytest.mark.slow  # a second export: ~30 s
def test_a_portable_export_keeps_to_standard_operators_and_draws_the_same_codes(
    portable, exported, reference
):
    out, manifest = portable
    assert manifest["attention_form"] == "decomposed"
    for spec in manifest["graphs"].values():
        assert {domain for domain, _ in _ops(out / spec["file"])} <= {""}
    _, _, processor, _ = reference
    conversations = [processor.t2i_messages(p) for p in ("a red circle", "make it green")]
    unconditional = [processor.t2i_messages("")] * 2
    kwargs = {"guidance": 3.0, "temperature": 1.0}
    draws = [
        OnnxImageGenerator(directory)(
            conversations, unconditional, generator=torch.Generator().manual_seed(3), **kwargs
        )
        for directory in (out, exported[0])
    ]
    assert torch.equal(*draws)


def test_tensorrt_refuses_an_export_with_onnx_runtimes_contrib_kernels(exported):
    from illume_runtime.tensorrt import TensorRTModels

    with pytest.raises(ValueError, match="illume export --portable"):
        TensorRTModels(exported[0])


def test_onnx_runtime_fuses_each_rmsnorm_of_the_decode_graph_into_one_kernel(exported, tmp_path):
    import onnxruntime as ort

    out, manifest = exported
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "decode.optimized.onnx")
    ort.InferenceSession(str(out / "decode.onnx"), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    # two a layer and the final norm; none left as Pow / ReduceMean / Sqrt / division
    assert ops.count("SimplifiedLayerNormalization") == 2 * manifest["decoder"]["layers"] + 1
    assert "Reciprocal" not in ops and "ReduceMean" not in ops


def _close(got, want):
    np.testing.assert_allclose(got, want.detach().numpy(), atol=1e-4, rtol=1e-3)


def test_each_sub_model_matches_pytorch_at_other_batch_sizes(exported, reference):
    out, _ = exported
    tokenizer, model, _processor, detok = reference
    models = OnnxModels(out)
    torch.manual_seed(1)
    pixels = torch.rand(3, 3, 32, 32)  # batch 3: the graphs were traced at 2
    with torch.no_grad():
        codes = tokenizer.encode(pixels).codes
        assert np.array_equal(
            models.run("tokenizer_encoder", pixel_values=pixels.numpy())[0], codes.numpy()
        )
        features = tokenizer.decode_features(codes)
        _close(models.run("tokenizer_decoder", codes=codes.numpy())[0], features)
        from illume_mllm.decoder import vision_features

        _close(
            models.run("vision_adapter", pixel_values=pixels.numpy())[0],
            vision_features(model, pixels),
        )
        conditions = detok.conditioner(features)
        got = models.run("conditioner", features=features.numpy())
        _close(got[0], conditions.encoder_hidden_states)
        _close(got[1], conditions.spatial)
        sample = torch.randn(3, 3, 32, 32)  # the tiny preset denoises 32x32 RGB pixels
        t = torch.tensor([1.0, 300.0, 999.0])
        want = detok.predict(sample, t, conditions)
        got = models.run(
            "unet_step",
            sample=sample.numpy(),
            timestep=t.numpy(),
            encoder_hidden_states=conditions.encoder_hidden_states.numpy(),
            spatial=conditions.spatial.numpy(),
        )
        _close(got[0], want)


def test_prefill_then_decode_match_the_transformers_model(exported, reference):
    out, _ = exported
    _, model, processor, _ = reference
    gen = OnnxImageGenerator(out)
    conversations = [
        processor.t2i_messages("a red circle"),
        processor.t2i_messages("a red circle above a blue square"),
    ]
    logits, presents, mask, position = gen._prefill(conversations)
    batch = processor.collate(
        [processor.encode_conversation(c, add_generation_prompt=True) for c in conversations],
        padding_side="left",
    )
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=positions,
            use_cache=True,
        )
    _close(logits.numpy(), full.logits[:, -1])
    token = np.array([5, 6], np.int64)
    mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
    step, _ = gen._decode(token, mask, position, presents)
    with torch.no_grad():
        want = model(
            input_ids=torch.from_numpy(token)[:, None],
            attention_mask=torch.from_numpy(mask),
            position_ids=torch.from_numpy(position)[:, None],
            past_key_values=full.past_key_values,
        ).logits[:, -1]
    _close(step.numpy(), want)


def test_onnx_loop_draws_the_reference_codes_with_the_same_seed(
    exported, reference, draws_the_reference
):
    out, _ = exported
    _, model, processor, _ = reference
    prompts = ["a red circle", "a red circle above a blue square", "make it green"]
    conversations = [processor.t2i_messages(p) for p in prompts]
    unconditional = [processor.t2i_messages("")] * len(prompts)
    settings = (
        {"guidance": 3.0},
        {"guidance": 2.0, "temperature": 0.7, "top_k": 5},
        {"guidance": 1.0, "temperature": 0.0},
    )
    draws_the_reference(
        OnnxImageGenerator(out), model, processor, conversations, unconditional, settings, seed=11
    )


@pytest.mark.slow  # a second ONNX export: ~20 s
def test_grid_embeddings_export_and_draw_the_reference_codes(
    grid_pipeline_dir, tmp_path, draws_the_reference
):
    """A model with grid embeddings: its embeddings and decode graphs take each token's cell."""
    manifest = export_pipeline(grid_pipeline_dir, tmp_path / "graphs")
    assert manifest["grid_embeddings"] is True
    assert manifest["graphs"]["embeddings"]["inputs"] == ["input_ids", "grid_positions"]
    assert manifest["graphs"]["decode"]["inputs"][:4] == [
        "input_ids",
        "attention_mask",
        "position_ids",
        "grid_positions",
    ]
    model = IllumeForConditionalGeneration.from_pretrained(grid_pipeline_dir / "mllm").eval()
    processor = IllumeProcessor.from_pretrained(grid_pipeline_dir / "mllm")
    gen = OnnxImageGenerator(tmp_path / "graphs")
    prompts = ["a red circle", "a red circle above a blue square"]
    conversations = [processor.t2i_messages(p) for p in prompts]
    unconditional = [processor.t2i_messages("")] * len(prompts)
    settings = ({"guidance": 3.0}, {"guidance": 1.0, "temperature": 0.0})
    drawn = draws_the_reference(gen, model, processor, conversations, unconditional, settings, 11)
    history = [*conversations[0], Message("assistant", [drawn[0]]), Message("user", "what is it ?")]
    assert gen.greedy_text([history]) == generate_text(model, processor, [history])


def test_identical_greedy_text_on_a_fixed_prompt_set(exported, reference):
    out, _ = exported
    _, model, processor, _ = reference
    from PIL import Image

    conversations = [
        [Message("user", [Image.new("RGB", (32, 32), c), q])]
        for c, q in (((200, 0, 0), "what is it ?"), ((0, 0, 200), "a red circle"))
    ]
    want = generate_text(model, processor, conversations, max_new_tokens=6)
    assert OnnxImageGenerator(out).greedy_text(conversations, max_new_tokens=6) == want


def test_a_directory_without_a_manifest_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="illume export"):
        OnnxModels(tmp_path)


@pytest.mark.gpu
def test_onnx_runtime_on_cuda_draws_the_greedy_codes_of_the_cpu(exported, reference):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    out, _ = exported
    _, _, processor, _ = reference
    conversations = [processor.t2i_messages(p) for p in ("a red circle", "make it green")]
    unconditional = [processor.t2i_messages("")] * 2
    kwargs = {"guidance": 3.0, "temperature": 0.0}
    want = OnnxImageGenerator(out)(conversations, unconditional, **kwargs)
    assert torch.equal(
        OnnxImageGenerator(out, device="cuda")(conversations, unconditional, **kwargs), want
    )


@pytest.mark.gpu
def test_tensorrt_engines_match_onnx_runtime_and_are_cached(portable):
    pytest.importorskip("tensorrt")
    from illume_runtime.tensorrt import TensorRTSession, build_engine, graph_profiles

    out, manifest = portable
    models = OnnxModels(out)
    codes = torch.randint(
        0, manifest["tokenizer"]["codebook_size"], (3, *manifest["tokenizer"]["grid"])
    )
    engine = build_engine(
        out / "tokenizer_decoder.onnx",
        {"codes": ((1, *codes.shape[1:]), (2, *codes.shape[1:]), (8, *codes.shape[1:]))},
    )
    got = TensorRTSession(engine).run({"codes": codes.cuda()})["features"].cpu().numpy()
    np.testing.assert_allclose(
        got, models.run("tokenizer_decoder", codes=codes.numpy())[0], atol=1e-3, rtol=1e-3
    )
    mtime = engine.stat().st_mtime_ns
    assert (
        build_engine(
            out / "tokenizer_decoder.onnx",
            {"codes": ((1, *codes.shape[1:]), (2, *codes.shape[1:]), (8, *codes.shape[1:]))},
        )
        == engine
    )
    assert engine.stat().st_mtime_ns == mtime  # loaded from the cache, not rebuilt
    s = manifest["decoder"]
    decode = TensorRTSession(
        build_engine(out / "decode.onnx", graph_profiles(out, manifest, "decode", max_sequence=64))
    )
    feeds = {
        "input_ids": np.array([[3], [4]]),
        "attention_mask": np.ones((2, 6), np.int64),
        "position_ids": np.array([[5], [5]]),
    }
    for i in range(s["layers"]):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{i}.{kind}"] = (
                np.random.default_rng(i)
                .standard_normal((2, s["kv_heads"], 5, s["head_dim"]))
                .astype(np.float32)
            )
    want = models.run("decode", **feeds)[0]
    got = (
        decode.run({k: torch.from_numpy(v).cuda() for k, v in feeds.items()})["logits"]
        .cpu()
        .numpy()
    )
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=1e-3)


def test_tensorrt_profiles_come_from_every_graphs_dynamic_axes(exported):
    """The native engines' optimization profiles, read from the export (no TensorRT needed):
    the decoder's are those the KV-cache loop needs, and every graph gets one."""
    from illume_runtime.tensorrt import graph_profiles

    out, manifest = exported
    s = manifest["decoder"]
    decode = graph_profiles(out, manifest, "decode", max_batch=8, max_sequence=64)
    assert decode["input_ids"] == ((1, 1), (2, 1), (8, 1))
    assert decode["attention_mask"] == ((1, 2), (2, 64), (8, 64))  # a past and the new token
    kv = lambda past: (s["kv_heads"], past, s["head_dim"])  # noqa: E731
    assert decode["past_key_values.0.key"] == ((1, *kv(1)), (2, *kv(63)), (8, *kv(63)))
    prefill = graph_profiles(out, manifest, "prefill", max_batch=8, max_sequence=2048)
    assert prefill["inputs_embeds"] == (
        (1, 1, s["hidden"]),
        (2, 128, s["hidden"]),
        (8, 2048, s["hidden"]),
    )
    stored = json.loads((out / "manifest.json").read_text())  # axis keys as JSON strings
    for name, spec in stored["graphs"].items():
        profiles = graph_profiles(out, stored, name, max_batch=4)
        assert set(profiles) == set(spec["inputs"])
        for low, opt, high in profiles.values():
            assert all(a <= b <= c for a, b, c in zip(low, opt, high, strict=True))
            assert low[0] == 1 and high[0] == 4  # every graph's first axis is its batch


def test_a_gpu_provider_that_is_missing_names_the_wheel_to_swap(exported):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine's ONNX Runtime has CUDA")
    out, _ = exported
    with pytest.raises(RuntimeError, match=r"pip uninstall -y onnxruntime && pip install"):
        OnnxModels(out, device="cuda")


@pytest.mark.gpu
def test_native_tensorrt_runtime_draws_the_greedy_codes_of_the_torch_loop(pipeline_dir, portable):
    pytest.importorskip("tensorrt")
    from illume.pipeline import IllumePipeline

    out, _ = portable
    pipe = IllumePipeline.from_pretrained(pipeline_dir)
    pipe.sampling.temperature = 0.0
    want = pipe("a red circle", seed=0).codes
    pipe.use_runtime("tensorrt", out)
    assert torch.equal(pipe("a red circle", seed=0).codes.cpu(), want)


@pytest.mark.parametrize("preset", ["tiny", "shapes-cells"])
def test_the_exported_unet_step_takes_the_sample_the_pipeline_denoises(preset):
    """Whatever channels the pipeline adds (feature grid, coordinates, places within a patch:
    the demo's shapes-cells detokenizer has all three), the exported step's sample is the
    denoised one."""
    from illume_detokenizer import DetokenizerConfig, build_pipeline
    from illume_detokenizer.conditioner import Conditions
    from illume_runtime.export import unet_sample_shape

    config = DetokenizerConfig.from_name(preset)
    pipe = build_pipeline(config, feature_dim=8, num_tokens=9)
    shape = unet_sample_shape(pipe)
    sample = torch.randn(2, *shape)
    conditions = pipe.conditioner(torch.randn(2, 9, 8))
    with torch.no_grad():
        prediction = pipe.predict(sample, torch.tensor([10, 500]), Conditions.cat([conditions]))
    assert prediction.shape == sample.shape


def test_sjd_through_onnx_runtime_draws_the_torch_loops_greedy_codes_in_fewer_passes(
    exported, reference
):
    """decode_window.onnx verifies a window per pass; greedy SJD gives plain greedy's codes."""
    from illume_mllm import TorchImageGenerator

    out, manifest = exported
    assert "decode_window" in manifest["graphs"]
    _, model, processor, _ = reference
    conversations = [processor.t2i_messages(p) for p in ("a red circle", "make it green")]
    unconditional = [processor.t2i_messages("")] * 2
    kwargs = {"guidance": 3.0, "temperature": 0.0}
    want = TorchImageGenerator(model, processor)(conversations, unconditional, **kwargs)
    onnx_loop = OnnxImageGenerator(out)
    plain = onnx_loop(conversations, unconditional, **kwargs)
    plain_passes = onnx_loop.forward_passes
    sjd = onnx_loop(conversations, unconditional, decoding="sjd", window=4, **kwargs)
    assert torch.equal(plain, want) and torch.equal(sjd, want)
    assert onnx_loop.forward_passes <= plain_passes
    # sampled: a valid image of the right shape from the same graphs
    sampled = onnx_loop(conversations, unconditional, guidance=2.0, decoding="sjd",
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert sampled.shape == want.shape


def test_export_options_are_checked_before_anything_is_exported(tmp_path):
    from illume_runtime.export import check_export_options

    with pytest.raises(ValueError, match="decoder_weights must be one of"):
        export_pipeline(tmp_path, tmp_path / "out", decoder_weights="int3")
    with pytest.raises(ValueError, match="portable"):
        check_export_options(portable=True, decoder_weights="int8")
    check_export_options(portable=True, decoder_weights="float32")


@pytest.mark.slow  # a second export, quantized: ~30 s
def test_int8_decoder_weights_quantize_every_layer_matmul_and_stay_close(
    pipeline_dir, exported, reference, tmp_path
):
    float_out, float_manifest = exported
    out = tmp_path / "int8"
    manifest = export_pipeline(pipeline_dir, out, decoder_weights="int8")
    assert manifest["decoder_weights"] == "int8" and float_manifest["decoder_weights"] == "float32"
    for name, spec in manifest["graphs"].items():
        ops, float_ops = _ops(out / spec["file"]), _ops(float_out / spec["file"])
        quantized = ops.count(("com.microsoft", "MatMulNBits"))
        if name in ("prefill", "decode", "decode_window"):
            # every matmul by a weight (fused q/k/v, output, fused gate/up, down) of every layer
            graph = onnx.load(str(float_out / spec["file"])).graph
            weights = {w.name for w in graph.initializer}
            by_weight = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
            assert quantized == len(by_weight) >= 4 * manifest["decoder"]["layers"]
            assert ops.count(("", "MatMul")) == float_ops.count(("", "MatMul")) - quantized
        else:
            assert quantized == 0

    # the same prompts through both: int8's logits off the float logits by under 5% of their
    # spread, root mean square (on the random-weight `shapes` model: int8 0.012, int4 0.13, the
    # int8 weights shuffled 1.45; a max-based bound sat at 0.047 for int8 there)
    _, _, processor, _ = reference
    fast = {d: OnnxImageGenerator(d) for d in (out, float_out)}
    conversations = [processor.t2i_messages(p) for p in ("a red circle", "two blue squares")]
    logits = {}
    for directory, loop in fast.items():
        first, presents, mask, position = loop._prefill(conversations)
        token = np.full(len(conversations), processor.vocab.start_of_image, np.int64)
        mask = np.concatenate([mask, np.ones((len(token), 1), np.int64)], axis=1)
        step, _ = loop._decode(token, mask, position, presents)
        logits[directory] = (first.numpy(), step.numpy())
    for got, want in zip(logits[out], logits[float_out], strict=True):
        assert np.sqrt(((got - want) ** 2).mean()) < 0.05 * want.std()
    codes = fast[out](
        conversations,
        [processor.t2i_messages("")] * 2,
        guidance=3.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert codes.shape == (2, *processor.config.image_grid)


def test_tensorrt_refuses_quantized_decoder_weights(exported, tmp_path):
    from illume_runtime.tensorrt import TensorRTModels

    out = tmp_path / "copy"
    out.mkdir()
    manifest = dict(exported[1], attention_form="decomposed", decoder_weights="int8")
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="MatMulNBits"):
        TensorRTModels(out)
