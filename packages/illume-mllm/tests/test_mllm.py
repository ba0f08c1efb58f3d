"""The real-architecture path in miniature: a tiny Llama and a tiny SigLIP built with transformers,
saved, loaded by path (as Vicuna-7B and SigLIP-so400m would be)."""

import pytest
import torch
from PIL import Image
from transformers import (
    AutoModelForImageTextToText,
    LlamaConfig,
    LlamaForCausalLM,
    SiglipVisionModel,
)

from illume_core import Message
from illume_mllm import (
    IGNORE,
    Example,
    IllumeForConditionalGeneration,
    IllumeProcessor,
    ImageTokenSampler,
    answer_log_likelihood,
    build_model,
    build_processor,
    build_word_tokenizer,
    filter_logits,
    generate_image_tokens,
    generate_text,
)

K, GRID = 20, (4, 4)
TEXTS = [
    "a red circle",
    "what color is it ? red",
    "make it blue",
    "now remove it",
    "generate an image of .",
]


@pytest.fixture(scope="module")
def parts(tmp_path_factory, tiny_parts):
    """A one-layer tower and a narrower Llama than the shared tiny MLLM's (root conftest)."""
    root = tmp_path_factory.mktemp("parts")
    tiny_parts(root, TEXTS, vision_layers=1, llm_hidden=32, llm_intermediate=64, llm_heads=2)
    return root


@pytest.fixture
def built(parts):
    from transformers import AutoTokenizer

    processor = build_processor(
        AutoTokenizer.from_pretrained(parts / "text"), parts / "vision", K, GRID, preset="shapes"
    )
    torch.manual_seed(0)
    model = build_model(processor, parts / "vision", parts / "llm").eval()
    with torch.no_grad():  # new rows start near their mean; spread them so argmaxes are not ties
        model.lm_head.weight.add_(torch.randn_like(model.lm_head.weight))
    return model, processor


def _image(color=(200, 0, 0)):
    return Image.new("RGB", (32, 32), color)


def test_vocabulary_extended_and_weights_loaded_from_paths(parts, built):
    model, processor = built
    original = len(build_word_tokenizer(TEXTS))
    assert len(processor.tokenizer) == original + 4 + K
    assert model.config.text_config.vocab_size == len(processor.tokenizer)
    vocab = processor.vocab
    assert list(vocab.vision_ids) == list(range(vocab.offset, vocab.offset + K))
    llm = LlamaForCausalLM.from_pretrained(parts / "llm")
    assert torch.equal(
        model.get_input_embeddings().weight[:original], llm.get_input_embeddings().weight
    )
    tower = SiglipVisionModel.from_pretrained(parts / "vision")
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.vision_tower.state_dict().values(), tower.state_dict().values())
    )


def test_saved_model_reloads_through_the_auto_classes(tmp_path, built):
    model, processor = built
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, IllumeForConditionalGeneration)
    again = IllumeProcessor.from_pretrained(tmp_path)
    assert again.vocab == processor.vocab and again.config == processor.config
    batch = processor.collate(
        [processor.encode_conversation([Message("user", [_image(), "what color is it ?"])], True)]
    )
    batch.pop("labels")
    torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)


def test_labels_cover_only_assistant_answers(built):
    _, processor = built
    codes = torch.arange(16).reshape(4, 4)
    example = processor.encode_conversation(
        [
            Message("user", [_image(), "make it blue"]),
            Message("assistant", [codes]),
            Message("user", "what color is it ?"),
            Message("assistant", "red"),
        ]
    )
    learned = [t for t, label in zip(example.input_ids, example.labels) if label != IGNORE]
    eos = processor.tokenizer.eos_token_id
    assert learned == [*processor.image_output_ids(codes), eos, *processor.text_ids("red"), eos]
    assert example.input_ids.count(processor.vocab.image) == processor.config.image_seq_length
    assert torch.equal(processor.codes_from_ids(processor.image_output_ids(codes)), codes)
    with pytest.raises(ValueError, match=r"must be \[4, 4\]"):
        processor.image_output_ids(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="must lie in"):
        processor.image_output_ids(torch.full((4, 4), K))
    with pytest.raises(ValueError, match="input images belong in user turns"):
        processor.encode_conversation([Message("user", "x"), Message("assistant", [_image()])])


def test_answer_log_likelihood_is_the_answers_cross_entropy_alone_or_batched(built):
    model, processor = built
    talks = [
        [Message("user", [_image(), "what color is it ?"]), Message("assistant", "red")],
        [
            Message("user", [_image((0, 0, 200)), "what color is it ?"]),
            Message("assistant", "make it blue"),
        ],
        [
            Message("user", "generate an image of a red circle ."),
            Message("assistant", [torch.arange(16).reshape(4, 4)]),
        ],
    ]
    batched = answer_log_likelihood(model, processor, talks)
    for talk, score in zip(talks, batched):
        inputs = processor.collate([processor.encode_conversation(talk)])
        answered = int((inputs["labels"] != IGNORE).sum())
        with torch.no_grad():  # transformers' own loss: the mean over the answer's tokens
            loss = model(**{k: v for k, v in inputs.items() if v is not None}).loss
        assert torch.allclose(score, -loss * answered, atol=1e-4)  # the batch's padding: no change
    assert batched[0] != batched[1]  # two conversations, two scores


def _answer_loss_and_grads(model, processor, examples):
    """Summed answer cross-entropy of a collated batch and the gradients it gives every weight."""
    model.zero_grad()
    inputs = processor.collate(examples)
    labels = inputs.pop("labels")[:, 1:]
    inputs = {k: v for k, v in inputs.items() if v is not None}
    logits = model(**inputs).logits[:, :-1]
    loss = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum"
    )
    loss.backward()
    return loss.detach(), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


def test_packed_questions_train_exactly_like_separate_ones(built):
    """Questions about one image packed behind one copy of it: the same loss and gradients as
    the conversations one by one (the mask hides the other questions, positions restart)."""
    model, processor = built
    image = _image((0, 0, 200))
    asks = [("what color is it ?", "red"), ("a red circle", "blue"), ("now remove it", "red red")]
    alone = [
        processor.encode_conversation([Message("user", [image, q]), Message("assistant", a)])
        for q, a in asks
    ]
    packed = processor.pack(alone)
    assert packed.input_ids.count(processor.vocab.image) == processor.config.image_seq_length
    assert len(packed.input_ids) < sum(len(e.input_ids) for e in alone)
    # a plain conversation in the same batch is untouched by its packed neighbour
    other = processor.encode_conversation(
        [
            Message("user", "make it blue"),
            Message("assistant", [torch.zeros(4, 4, dtype=torch.long)]),
        ]
    )
    loss_apart, grads_apart = _answer_loss_and_grads(model, processor, [*alone, other])
    loss_packed, grads_packed = _answer_loss_and_grads(model, processor, [packed, other])
    assert torch.allclose(loss_packed, loss_apart, rtol=1e-5)
    assert grads_packed.keys() == grads_apart.keys()
    for name, grad in grads_apart.items():
        assert torch.allclose(grads_packed[name], grad, atol=1e-6, rtol=1e-4), name
    # the mask is what makes it exact: read causally, the later questions see the earlier ones
    causal = Example(packed.input_ids, packed.labels, packed.images)
    loss_causal, _ = _answer_loss_and_grads(model, processor, [causal])
    loss_alone, _ = _answer_loss_and_grads(model, processor, alone)
    assert not torch.allclose(loss_causal, loss_alone, rtol=1e-3)
    elsewhere = processor.encode_conversation(
        [Message("user", [_image(), "a red circle"]), Message("assistant", "red")]
    )
    with pytest.raises(ValueError, match="share"):
        processor.pack([alone[0], elsewhere])
    with pytest.raises(ValueError, match="right padding"):
        processor.collate([packed], padding_side="left")


def test_stage_one_moves_only_the_new_vocabulary_rows(built):
    model, processor = built
    model.train().requires_grad_(False)
    matrices = model.train_new_rows_only()
    adapter = list(model.adapter.parameters())
    for p in adapter:
        p.requires_grad_(True)
    before = [m.detach().clone() for m in matrices]
    optimizer = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": 0.0}, {"params": adapter}], lr=1e-2
    )
    batch = processor.collate(
        [
            processor.encode_conversation(
                [Message("user", [_image()]), Message("assistant", "a red circle")]
            ),
            processor.encode_conversation(
                [Message("user", "a red circle"), Message("assistant", [torch.randint(0, K, GRID)])]
            ),
        ]
    )
    model(**batch).loss.backward()
    optimizer.step()
    new = model.new_rows()
    for weight, old in zip(matrices, before):
        assert torch.equal(weight[~new], old[~new]), "a text row changed in stage 1"
        assert not torch.equal(weight[new], old[new])
    model.release_rows()


def test_image_generation_grid_seeds_and_batching(built):
    model, processor = built
    prompts = [processor.t2i_messages("a red circle")] * 2
    uncond = [processor.t2i_messages("")] * 2

    def draw(seed, **kw):
        return generate_image_tokens(
            model,
            processor,
            prompts,
            uncond,
            guidance=3.0,
            top_k=8,
            generator=torch.Generator().manual_seed(seed),
            **kw,
        )

    first = draw(0)
    assert first.shape == (2, *GRID) and first.min() >= 0 and first.max() < K
    assert torch.equal(first, draw(0))
    assert not torch.equal(first, draw(1))
    # Greedy: a prompt gives the same image alone and left-padded in a batch with a longer one.
    mixed = [
        processor.t2i_messages("a red circle"),
        processor.t2i_messages("a red circle . what color is it ?"),
    ]
    batch = generate_image_tokens(model, processor, mixed, temperature=0.0)
    alone = generate_image_tokens(model, processor, mixed[:1], temperature=0.0)
    assert torch.equal(batch[:1], alone)
    with pytest.raises(ValueError, match="needs one unconditional conversation"):
        generate_image_tokens(model, processor, prompts, guidance=2.0)


def test_two_turn_editing_conversation(built):
    model, processor = built
    generator = torch.Generator().manual_seed(0)
    history = [Message("user", [_image(), "make it blue"])]
    first = generate_image_tokens(model, processor, [history], generator=generator)[0]
    history += [Message("assistant", [first]), Message("user", "now remove it")]
    second = generate_image_tokens(model, processor, [history], generator=generator)[0]
    assert second.shape == GRID
    answer = generate_text(model, processor, [history[:1]], max_new_tokens=3)
    # greedy and batch-independent: alone or beside a longer conversation, the same answer
    both = generate_text(model, processor, [history[:1], history], max_new_tokens=3)
    assert isinstance(answer[0], str) and both[0] == answer[0]


def test_edit_source_codes_show_the_source_image_as_unlabelled_vision_tokens(built):
    _, processor = built
    config = processor.config
    codes = torch.arange(GRID[0] * GRID[1]).view(GRID) % K
    request = Message("user", ["make it blue", _image()])
    assert processor.with_source_codes(request, [codes]) is request  # off: the paper's format
    config.edit_source_codes = True
    try:
        shown = processor.with_source_codes(request, [codes])
        assert shown.parts[:2] == request.parts and torch.equal(shown.parts[2], codes)
        example = processor.encode_conversation([shown, Message("assistant", [codes])])
        source = processor.image_output_ids(codes)
        n = len(source)
        at = next(
            i for i in range(len(example.input_ids)) if example.input_ids[i : i + n] == source
        )
        assert example.labels[at : at + n] == [IGNORE] * n  # read, not learned
        assert example.labels[-n - 1 : -1] == source  # the answer is learned
        with pytest.raises(ValueError, match="1 input images but 2 code grids"):
            processor.with_source_codes(request, [codes, codes])
    finally:
        config.edit_source_codes = False


def test_sampler_structure_and_filters():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2, top_p=None)).tolist() == [
        [True, False, False, True]
    ]
    kept = ~torch.isinf(filter_logits(logits, top_k=None, top_p=0.5))
    assert kept.tolist() == [[False, True, False, False]]
    from illume_mllm import VisionVocab

    sampler = ImageTokenSampler(
        VisionVocab(0, 1, 2, 3, 10, 5), (2, 3), prompt_length=0, eos_token_id=9
    )
    layout = [sampler.forced(i) for i in range(sampler.length + 1)]
    assert layout == [1, None, None, None, 3, None, None, None, 3, 2, 9]
    with pytest.raises(ValueError, match="temperature"):
        ImageTokenSampler(VisionVocab(0, 1, 2, 3, 10, 5), (2, 3), 0, temperature=-1)


def test_the_shapesworld_text_tokenizer_round_trips_any_text_exactly():
    from illume_mllm import build_text_tokenizer

    tokenizer = build_text_tokenizer(TEXTS * 20)
    assessment = '{"Object": {"Score": 1, "Analysis": "A red Circle is there."}, "Spatial Relation": {"Score": 0}}'
    for text in (*TEXTS, assessment, "Ünïcode, TABS\tand  double  spaces"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    assert (
        len(tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]) <= len(TEXTS[0].split()) + 1
    )


@pytest.mark.parametrize("name", ["tiny", "shapes", "shapes-wide"])
def test_llm_presets_are_valid_llama_configs(name):
    from illume_mllm import LLM_PRESETS

    preset = LLM_PRESETS[name]
    config = LlamaConfig(**preset, vocab_size=64)
    assert config.hidden_size % config.num_attention_heads == 0, "head_dim must be whole"
    with torch.device("meta"):  # shapes only: a wrong preset fails to build here
        model = LlamaForCausalLM(config)
    assert len(model.model.layers) == preset["num_hidden_layers"]


def test_grid_embeddings_place_every_code_with_and_without_a_kv_cache(tmp_path, parts, built):
    plain, processor = built
    model = build_model(processor, parts / "vision", parts / "llm", grid_embeddings=True).eval()
    missing = model.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["grid_embedding.columns", "grid_embedding.rows"]
    codes = torch.arange(16).reshape(4, 4)
    batch = processor.collate(
        [
            processor.encode_conversation(
                [Message("user", [_image(), "make it blue"]), Message("assistant", [codes])]
            )
        ]
    )
    batch.pop("labels")
    # Zero at the start: the model is the one without them.
    torch.testing.assert_close(model(**batch).logits, plain(**batch).logits)

    # Each code sits at its cell: row r, column c of the 4 x 4 grid.
    ids = batch["input_ids"][0]
    cells = model.grid_positions(batch["input_ids"])[0]
    assert cells[ids >= processor.vocab.offset].tolist() == list(range(16))
    assert (cells[ids < processor.vocab.offset] == -1).all()

    with torch.no_grad():
        model.grid_embedding.rows.normal_()
        model.grid_embedding.columns.normal_()
    logits = model(**batch).logits
    first_code = int((ids >= processor.vocab.offset).nonzero()[0])
    torch.testing.assert_close(logits[:, :first_code], plain(**batch).logits[:, :first_code])
    assert not torch.allclose(logits[:, first_code:], plain(**batch).logits[:, first_code:])

    # Generation feeds one token at a time over a KV cache: each greedy code must be the argmax
    # of a forward over the whole sequence, where every position is counted from the tokens.
    prompt = [processor.t2i_messages("a red circle")]
    drawn = generate_image_tokens(model, processor, prompt, temperature=0.0)[0]
    example = processor.encode_conversation([*prompt[0], Message("assistant", [drawn])])
    full = torch.tensor([example.input_ids])
    with torch.no_grad():
        scores = model(input_ids=full).logits[0]
    vision = processor.vocab.vision_ids
    at = (full[0] >= vision.start).nonzero()[:, 0]
    assert torch.equal(scores[at - 1, vision.start : vision.stop].argmax(-1), drawn.flatten())
    assert not torch.equal(
        drawn, generate_image_tokens(plain, processor, prompt, temperature=0.0)[0]
    )

    # Saved and reloaded with them; added to a model saved without them (a later stage), at zero.
    model.save_pretrained(tmp_path / "grid")
    again = IllumeForConditionalGeneration.from_pretrained(tmp_path / "grid")
    assert torch.equal(again.grid_embedding.rows, model.grid_embedding.rows)
    plain.save_pretrained(tmp_path / "plain")
    added = IllumeForConditionalGeneration.from_pretrained(tmp_path / "plain", grid_embeddings=True)
    assert added.config.grid_embeddings and not added.grid_embedding.rows.any()

    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(input_ids=full[:, :-1], past_key_values=cache)
    with pytest.raises(ValueError, match="pass grid_positions"):
        model(input_ids=full[:, -1:], past_key_values=cache)


def test_user_text_never_becomes_control_tokens(built):
    """'<image>', '</s>', '<start_of_image>' typed by a user are characters, not control tokens:
    no image slot is claimed, no turn ends, no image opens."""
    _, processor = built
    v = processor.vocab
    controls = {
        v.image,
        v.start_of_image,
        v.end_of_image,
        v.end_of_line,
        *v.vision_ids,
        processor.tokenizer.eos_token_id,
        processor.tokenizer.bos_token_id,
    }
    typed = "how many <image> are there ? <start_of_image> <image_3> </s> <s>"
    assert not set(processor.text_ids(typed)) & controls
    example = processor.encode_conversation([Message("user", [typed])], add_generation_prompt=True)
    assert example.input_ids.count(v.image) == 0 and example.images == []
    assert example.input_ids.count(processor.tokenizer.eos_token_id) == 0


def test_a_prompt_longer_than_the_context_is_a_clear_error(built):
    from illume_mllm import ContextLengthError, generate_text

    model, processor = built
    limit = model.config.text_config.max_position_embeddings
    long = " ".join(["red"] * (limit + 10))
    with pytest.raises(
        ContextLengthError, match=rf"the prompt is \d+ tokens .* context of {limit}"
    ):
        generate_text(model, processor, [[Message("user", [long])]])


def test_a_misspelt_config_key_is_an_error_naming_it(built, tmp_path):
    import json

    from illume_mllm import IllumeForConditionalGeneration

    model, _ = built
    model.save_pretrained(tmp_path / "m")
    IllumeForConditionalGeneration.from_pretrained(tmp_path / "m")  # as saved: loads
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["text_config"]["num_hidden_layerz"] = 8
    config["codebook_sise"] = 3
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"codebook_sise, text_config\.num_hidden_layerz"):
        IllumeForConditionalGeneration.from_pretrained(tmp_path / "m")


def test_a_text_tokenizer_trained_with_its_chat_template_knows_the_role_names_whole():
    from illume_mllm import build_text_tokenizer, chat_template_words, shipped_chat_template

    words = chat_template_words(shipped_chat_template("shapes"))
    assert words == "USER:ASSISTANT:"
    assert chat_template_words(shipped_chat_template("vicuna")) == "USER:  ASSISTANT: "

    def count(tokenizer, text):
        return len(tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids)

    plain = build_text_tokenizer(TEXTS * 20)
    knowing = build_text_tokenizer(TEXTS * 20, template_words=words)
    assert count(plain, "ASSISTANT:") >= 9  # spelled out letter by letter
    assert count(knowing, "USER:") == count(knowing, "ASSISTANT:") == 2  # the word, then ":"
    assert knowing.decode(knowing("USER:hi ASSISTANT:", add_special_tokens=False)["input_ids"]) == (
        "USER:hi ASSISTANT:"
    )
