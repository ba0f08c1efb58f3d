"""Shared pytest hooks and fixtures for every package's tests and the integration tests.

The tiny ILLUME MLLM (SigLIP tower, Llama with grouped-query attention) and a tiny pipeline
directory are built, saved and loaded by path, as real weights would be, once a session.
"""

import socket
import threading
import time

import pytest
import torch
from PIL import Image
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

from illume_core import Message
from illume_mllm import (
    IllumeForConditionalGeneration,
    IllumeProcessor,
    build_model,
    build_processor,
    build_word_tokenizer,
)


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip cleanly where CUDA is not available."""
    gpu_tests = [item for item in items if "gpu" in item.keywords]
    if not gpu_tests:
        return
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in gpu_tests:
            item.add_marker(skip)


# -- tiny models ------------------------------------------------------------------------------
K, GRID = 24, (3, 4)
TEXTS = [
    "a red circle above a blue square",
    "make it green",
    "generate an image of .",
    "what is it ?",
]


def build_tiny_parts(
    root,
    texts,
    vision_layers: int = 2,
    llm_hidden: int = 64,
    llm_intermediate: int = 96,
    llm_heads: int = 4,
    kv_heads: int = 2,
):
    """Writes a tiny SigLIP tower (root/vision, 32 px, 8 px patches), a tiny Llama (root/llm) and
    a word tokenizer of `texts` (root/text), seeded; returns the tokenizer."""
    torch.manual_seed(0)
    tokenizer = build_word_tokenizer(texts)
    vision = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=vision_layers,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    SiglipVisionModel(vision).save_pretrained(root / "vision")
    SiglipImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(root / "vision")
    llm = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=llm_hidden,
        intermediate_size=llm_intermediate,
        num_hidden_layers=2,
        num_attention_heads=llm_heads,
        num_key_value_heads=kv_heads,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(llm).save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "text")
    return tokenizer


@pytest.fixture(scope="session")
def tiny_parts():
    """`build_tiny_parts`, for tests that build an MLLM of their own shape from parts."""
    return build_tiny_parts


@pytest.fixture(scope="session")
def mllm_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mllm")
    tokenizer = build_tiny_parts(root, TEXTS)
    processor = build_processor(tokenizer, root / "vision", K, GRID, preset="shapes")
    model = build_model(processor, root / "vision", root / "llm", vision_feature_layer=-2)
    with torch.no_grad():  # spread the fresh rows so that draws are not near-uniform
        model.lm_head.weight.normal_(0, 0.5)
        model.get_input_embeddings().weight.normal_(0, 0.5)
    model.save_pretrained(root / "model")
    processor.save_pretrained(root / "model")
    return root / "model"


@pytest.fixture(scope="session")
def mllm(mllm_dir):
    return IllumeForConditionalGeneration.from_pretrained(
        mllm_dir
    ).eval(), IllumeProcessor.from_pretrained(mllm_dir)


def with_grid_embeddings(directory):
    """The model in `directory` with grid embeddings added, spread so that they change its draws."""
    model = IllumeForConditionalGeneration.from_pretrained(directory, grid_embeddings=True).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        model.grid_embedding.rows.normal_(0, 0.5)
        model.grid_embedding.columns.normal_(0, 0.5)
    return model


@pytest.fixture(scope="session")
def grid_mllm(mllm_dir):
    """The tiny MLLM with row and column embeddings of its output codes (IllumeConfig)."""
    return with_grid_embeddings(mllm_dir), IllumeProcessor.from_pretrained(mllm_dir)


def image(color=(200, 30, 30)):
    return Image.new("RGB", (32, 32), color)


def _t2i(processor, prompts):
    return [processor.t2i_messages(p) for p in prompts], [processor.t2i_messages("")] * len(prompts)


def _edits(colors, instruction="make it green"):
    return (
        [[Message("user", [image(c), instruction])] for c in colors],
        [[Message("user", [image(c)])] for c in colors],
    )


@pytest.fixture
def t2i():
    """(processor, prompts) -> (conversations, unconditional conversations) for text-to-image."""
    return _t2i


@pytest.fixture
def edits():
    """(colours of the input images) -> (edit conversations, the same without the instruction)."""
    return _edits


#: The words of the tiny pipeline's text tokenizer: what the tests ask of it.
PIPELINE_TEXTS = [
    *TEXTS,
    "generate an image of a red circle .",
    "how many circles ? one",
    "make it blue",
]


@pytest.fixture(scope="session")
def tiny_stages(tmp_path_factory):
    """A tiny tokenizer, MLLM and detokenizer, each in its own directory as the training stages
    save them (tok/, mllm/, detok/; enc/ is the tokenizer's encoder)."""
    from illume_detokenizer import DetokenizerConfig, build_pipeline
    from illume_mllm import LLM_PRESETS
    from illume_tokenizer import (
        SemanticTokenizer,
        TokenizerConfig,
        VisionEncoder,
        build_siglip,
        siglip_image_processor,
    )

    root = tmp_path_factory.mktemp("stages")
    torch.manual_seed(0)
    build_siglip("tiny", vocab_size=40).save_pretrained(root / "enc")
    siglip_image_processor(32).save_pretrained(root / "enc")
    tokenizer = SemanticTokenizer(
        TokenizerConfig.from_name("tiny"),
        VisionEncoder.from_pretrained(root / "enc", feature_layer=-2),
    )
    words = build_word_tokenizer(PIPELINE_TEXTS)
    processor = build_processor(
        words, root / "enc", tokenizer.codebook_size, tokenizer.grid, preset="shapes"
    )
    model = build_model(processor, root / "enc", LLM_PRESETS["tiny"], vision_feature_layer=-2)
    detok = build_pipeline(
        DetokenizerConfig.from_name("tiny", image_size=32, spatial_channels=4),
        tokenizer.config.feature_dim,
        tokenizer.grid[0] * tokenizer.grid[1],
        tokenizer.grid,
    )
    tokenizer.save_pretrained(root / "tok")
    model.save_pretrained(root / "mllm")
    processor.save_pretrained(root / "mllm")
    detok.save_pretrained(root / "detok")
    return root


@pytest.fixture(scope="session")
def pipeline_dir(tiny_stages, tmp_path_factory):
    """The tiny stages as one pipeline directory (tokenizer/, mllm/, detokenizer/), the layout
    IllumePipeline saves and loads."""
    import shutil

    root = tmp_path_factory.mktemp("pipeline") / "pipe"
    for stage, name in (("tok", "tokenizer"), ("mllm", "mllm"), ("detok", "detokenizer")):
        shutil.copytree(tiny_stages / stage, root / name)
    return root


@pytest.fixture(scope="session")
def grid_pipeline_dir(pipeline_dir, tmp_path_factory):
    """pipeline_dir with an MLLM that has grid embeddings."""
    import shutil

    root = tmp_path_factory.mktemp("grid_pipeline") / "pipe"
    shutil.copytree(pipeline_dir, root)
    with_grid_embeddings(root / "mllm").save_pretrained(root / "mllm")
    return root


def _draws_the_reference(fast, model, processor, conversations, unconditional, settings, seed=7):
    """`fast` (a fast loop) draws `generate_image_tokens`' codes for the same seed, under each of
    the sampling `settings`; returns the last codes."""
    from illume_mllm import generate_image_tokens

    for kwargs in settings:
        want = generate_image_tokens(
            model,
            processor,
            conversations,
            unconditional,
            generator=torch.Generator().manual_seed(seed),
            **kwargs,
        )
        got = fast(
            conversations, unconditional, generator=torch.Generator().manual_seed(seed), **kwargs
        )
        assert torch.equal(got, want), kwargs
    return got


@pytest.fixture
def draws_the_reference():
    return _draws_the_reference


def save_tiny_sdxl(root):
    """An SDXL-shaped model in miniature, in SDXL's diffusers layout (unet/, vae/, scheduler/)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        attention_head_dim=8,
        cross_attention_dim=64,
        norm_num_groups=8,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    unet.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")
    EulerDiscreteScheduler(beta_schedule="scaled_linear").save_pretrained(root / "scheduler")


@pytest.fixture(scope="session")
def tiny_sdxl():
    """`save_tiny_sdxl`: an SDXL-shaped model in miniature where a user's local SDXL would be."""
    return save_tiny_sdxl


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving an app on a free port in a thread, for the length of a test."""

    def __init__(self, app):
        import uvicorn

        self.port = _free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="session")
def live_server():
    """`with live_server(app) as server:` serves an ASGI app on 127.0.0.1 (server.url)."""
    return LiveServer
