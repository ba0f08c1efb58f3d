"""Self-enhancement: corpus self-generation (and its resume), the three assessors, Fig. C's SFT data."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from illume.self_enhance import (
    FOLLOW_UP,
    CorpusItem,
    Judgement,
    ModelAssessor,
    OpenAICompatibleAssessor,
    OracleAssessor,
    Prompt,
    assess_corpus,
    draw_corpus,
    prompts_from_captions,
    read_corpus,
    sft_conversations,
)
from illume_eval.assessment import oracle_assessment
from illume_eval.shapes import PromptSpec, Scene, render_pil, write_dataset

GOOD = oracle_assessment(
    PromptSpec.from_geneval(
        {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a circle"}
    ),
    objects=[],
).to_json()


@pytest.fixture(scope="module")
def stages(tiny_stages):
    """The tiny tokenizer, MLLM and detokenizer directories (the shared fixture)."""
    return tiny_stages


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_dataset(root, 24, seed=0, n_eval=8, progress=False)
    return root / "train" / "captions.jsonl"


def _pipe(stages):
    from illume.pipeline import IllumePipeline, SamplingConfig

    return IllumePipeline.from_stages(
        stages / "tok", stages / "mllm", stages / "detok", sampling=SamplingConfig(steps=2)
    )


# -- corpus -------------------------------------------------------------------------------------


def test_corpus_is_drawn_saved_and_reproducible(stages, captions, tmp_path):
    prompts = prompts_from_captions(captions, limit=5, seed=1)
    assert len(prompts) == 5 and all(p.spec and os.path.isfile(p.truth) for p in prompts)
    items = draw_corpus(
        _pipe(stages), prompts, tmp_path / "a", batch_size=2, seed=3, progress=False
    )
    assert [i.id for i in items] == [p.id for p in prompts]
    assert read_corpus(tmp_path / "a") == items
    assert items[0].sampling["guidance"] == 3.0 and items[0].seed == items[1].seed != items[2].seed
    again = draw_corpus(
        _pipe(stages), prompts, tmp_path / "b", batch_size=2, seed=3, progress=False
    )
    for x, y in zip(items, again, strict=True):
        assert (tmp_path / "a" / x.image).read_bytes() == (tmp_path / "b" / y.image).read_bytes()


CHILD = """
import sys, time
from illume.pipeline import IllumePipeline, SamplingConfig
from illume.self_enhance import draw_corpus, prompts_from_captions
stages, captions, out = sys.argv[1:4]
pipe = IllumePipeline.from_stages(stages + "/tok", stages + "/mllm", stages + "/detok",
                                  sampling=SamplingConfig(steps=2))
class Slow:  # the real pipeline, with time for the parent to kill us between batches
    sampling = pipe.sampling
    def generate_image(self, texts, seed):
        time.sleep(0.4)
        return pipe.generate_image(texts, seed=seed)
draw_corpus(Slow(), prompts_from_captions(captions), out, batch_size=2, progress=False)
"""


def test_a_kill_during_self_generation_redraws_nothing_already_saved(stages, captions, tmp_path):
    out = tmp_path / "corpus"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(stages), str(captions), str(out)])
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(read_corpus(out)) < 4:
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        child.kill()
    saved = read_corpus(out)
    total = len(prompts_from_captions(captions))  # the 24 rows less those never to be drawn
    assert 4 <= len(saved) < total, "the child must be killed mid-corpus"
    before = {item.id: (out / item.image).read_bytes() for item in saved}
    with open(out / "corpus.jsonl", "a") as log:
        log.write('{"id": "train-torn", "prompt": "a cut')  # a line torn by the kill
    pipe, drawn = _pipe(stages), []

    class Counting:
        sampling = pipe.sampling

        def generate_image(self, texts, seed):
            drawn.extend(texts)
            return pipe.generate_image(texts, seed=seed)

    prompts = prompts_from_captions(captions)
    items = draw_corpus(Counting(), prompts, out, batch_size=2, progress=False)
    assert len(items) == total and len(drawn) == total - len(saved)
    assert all(
        (out / item.image).read_bytes() == png for item in items if (png := before.get(item.id))
    )
    assert len(read_corpus(out)) == total


# -- assessors ----------------------------------------------------------------------------------


def _corpus(tmp_path, n=3):
    """A corpus of clean renders: a red circle, whose oracle assessment of 'a red circle' passes."""
    (tmp_path / "images").mkdir(exist_ok=True)
    scene = Scene.from_dict({"objects": [{"shape": "circle", "color": "red", "row": 1, "col": 1}]})
    spec = {
        "tag": "colors",
        "include": [{"class": "circle", "count": 1, "color": "red"}],
        "prompt": "a red circle",
    }
    items = []
    for i in range(n):
        render_pil(scene).save(tmp_path / "images" / f"{i}.png")
        items.append(
            CorpusItem(
                f"p{i}",
                "a red circle" if i else "a blue square",
                f"images/{i}.png",
                str(tmp_path / "images" / f"{i}.png"),
                0,
                {},
                spec
                if i
                else {
                    "tag": "colors",
                    "include": [{"class": "square", "count": 1, "color": "blue"}],
                    "prompt": "a blue square",
                },
            )
        )
    return items


def test_sft_data_holds_its_images_inside_its_own_folder(captions, tmp_path, monkeypatch):
    """A conversation file's image paths must stay inside its folder (a data file naming
    ../../etc/passwd is refused), so the ground truths a second turn needs are copied in beside
    the SFT data, and the file reads back through the ordinary loader, wherever the data was."""
    from illume_trainer.conversations import read_conversations

    monkeypatch.chdir(captions.parents[1])
    prompts = prompts_from_captions("train/captions.jsonl", 3, seed=0)
    assert all(os.path.isabs(p.truth) and os.path.isfile(p.truth) for p in prompts)
    (tmp_path / "corpus").mkdir()
    items = _corpus(tmp_path / "corpus")
    relative = [dataclasses.replace(i, truth=os.path.relpath(i.truth)) for i in items]
    judgements = assess_corpus(OracleAssessor(), items, tmp_path / "corpus", progress=False)
    conversations = sft_conversations(relative, judgements, tmp_path / "corpus", tmp_path)
    assert all(not os.path.isabs(p) for c in conversations for p in c["images"])
    (tmp_path / "sft.json").write_text(json.dumps(conversations))
    loaded = read_conversations(tmp_path / "sft.json")
    assert all(os.path.isfile(p) for c in loaded for p in c.images)
    second = [c for c in conversations if len(c["images"]) == 2]
    assert second and all(c["images"][1].startswith("truth/") for c in second)


def test_a_data_file_naming_a_path_outside_its_folder_is_refused(tmp_path):
    from illume_trainer.conversations import read_conversations
    from illume_trainer.data import ManifestError, read_captions

    (tmp_path / "bad.json").write_text(
        json.dumps(
            [
                {
                    "image": "../../../../etc/passwd",
                    "conversations": [
                        {"from": "human", "value": "<image>\nWhat?"},
                        {"from": "gpt", "value": "x"},
                    ],
                }
            ]
        )
    )
    with pytest.raises(ManifestError, match="entry 1: .* outside its data set"):
        read_conversations(tmp_path / "bad.json")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"image": "/etc/passwd", "text": "x"}) + "\n")
    with pytest.raises(ManifestError, match="line 1: .* absolute path"):
        read_captions(tmp_path / "bad.jsonl")
    assert (
        read_captions(tmp_path / "bad.jsonl", allow_absolute_paths=True)[0].image == "/etc/passwd"
    )


def test_oracle_assessments_and_fig_c_sft_data(tmp_path):
    items = _corpus(tmp_path)
    judgements = assess_corpus(OracleAssessor(), items, tmp_path, progress=False)
    assert [j.accepted for j in judgements] == [True] * 3
    assert (
        judgements[0].assessment["Object"]["Score"] == 0
        and judgements[1].assessment["Object"]["Score"] == 1
    )
    conversations = sft_conversations(items, judgements, tmp_path, tmp_path)
    bad, good = conversations[0], conversations[1]
    assert [t["from"] for t in bad["conversations"]] == ["human", "gpt", "human", "gpt"]
    assert (
        bad["conversations"][0]["value"].startswith("<image>\n")
        and "a blue square" in bad["conversations"][0]["value"]
    )
    assert json.loads(bad["conversations"][1]["value"]) == judgements[0].assessment
    assert bad["conversations"][2]["value"] == FOLLOW_UP.format(prompt="a blue square")
    assert bad["conversations"][3]["value"] == "<image>"
    assert (tmp_path / bad["images"][1]).read_bytes() == Path(items[0].truth).read_bytes()
    assert len(good["conversations"]) == 2 and len(good["images"]) == 1
    # a rerun judges nothing again
    assert assess_corpus(OracleAssessor(), items, tmp_path, progress=False) == judgements
    no_spec = CorpusItem("x", "a cat", items[0].image, items[0].truth, 0)
    with pytest.raises(ValueError, match="needs ShapesWorld prompts"):
        OracleAssessor().assess([no_spec], tmp_path)


def test_self_assessment_by_the_model_keeps_only_what_parses(stages, tmp_path):
    from illume_mllm import IllumeForConditionalGeneration, IllumeProcessor

    model = IllumeForConditionalGeneration.from_pretrained(stages / "mllm").eval()
    assessor = ModelAssessor(
        model, IllumeProcessor.from_pretrained(stages / "mllm"), max_new_tokens=8, retries=1
    )
    judgements = assessor.assess(_corpus(tmp_path, 2), tmp_path)
    # an untrained model writes no assessment JSON: asked twice, rejected with the reason
    assert [(j.accepted, j.attempts) for j in judgements] == [(False, 2), (False, 2)]
    assert all("JSON" in j.error or "empty" in j.error for j in judgements)


class _Endpoint:
    """A chat-completions server on loopback that answers from a script, one entry per request."""

    def __init__(self, script):
        self.script, self.requests, self.in_flight, self.max_in_flight = list(script), [], 0, 0
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with endpoint.lock:
                    endpoint.requests.append((self.path, self.headers.get("Authorization"), body))
                    kind, value = endpoint.script.pop(0) if endpoint.script else ("ok", GOOD)
                    endpoint.in_flight += 1
                    endpoint.max_in_flight = max(endpoint.max_in_flight, endpoint.in_flight)
                if kind == "sleep":
                    time.sleep(value)
                    kind, value = "ok", GOOD
                # Leave the count before answering: once the client reads the answer it may send
                # its next request, which must not find this one still counted.
                with endpoint.lock:
                    endpoint.in_flight -= 1
                try:
                    if kind == "status":
                        self.send_response(value)
                        self.end_headers()
                        self.wfile.write(b"busy")
                        return
                    if kind == "redirect":  # to another server, where the key must never go
                        self.send_response(302)
                        self.send_header("Location", value)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    if kind == "disconnect":  # hang up without a word
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    if kind in ("huge", "drip", "badutf8"):
                        self.send_response(200)
                        self.send_header("Content-Type", "application/json")
                        self.end_headers()
                        if kind == "huge":
                            for _ in range(value):
                                self.wfile.write(b" " * 65536)
                        elif kind == "drip":
                            for _ in range(value):
                                self.wfile.write(b" ")
                                self.wfile.flush()
                                time.sleep(0.2)
                        else:
                            self.wfile.write(b'{"choices": "\xff\xfe"}')
                        return
                    reply = {"choices": [{"message": {"role": "assistant", "content": value}}]}
                    data = json.dumps(reply).encode() if kind == "ok" else b"<html>not json"
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


@pytest.fixture
def endpoint():
    servers = []

    def start(script):
        servers.append(_Endpoint(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _remote(url, **kwargs):
    return OpenAICompatibleAssessor(
        url, "qwen2.5-vl", api_key="k", timeout=kwargs.pop("timeout", 2.0), backoff=0.01, **kwargs
    )


def test_openai_compatible_good_answers_and_the_request(endpoint, tmp_path):
    server = endpoint([("ok", GOOD), ("ok", "```json\n" + GOOD + "\n```")])
    judgements = _remote(server.url, concurrency=1).assess(_corpus(tmp_path, 2), tmp_path)
    assert [(j.accepted, j.attempts) for j in judgements] == [(True, 1), (True, 1)]
    path, auth, body = server.requests[0]
    assert path == "/v1/chat/completions" and auth == "Bearer k" and body["model"] == "qwen2.5-vl"
    content = body["messages"][0]["content"]
    assert content[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert "a blue square" in content[1]["text"]


def test_openai_compatible_malformed_answers_are_retried_then_rejected(endpoint, tmp_path):
    bad = '{"Object": {"Score": 1, "Analysis": "ok"}}'  # three aspects missing
    server = endpoint(
        [("ok", "not json"), ("ok", GOOD), ("garbage", None), ("ok", bad), ("ok", bad)]
    )
    items = _corpus(tmp_path, 2)
    judgements = _remote(server.url, retries=2, concurrency=1).assess(items, tmp_path)
    assert (judgements[0].accepted, judgements[0].attempts) == (True, 2)
    assert (
        not judgements[1].accepted
        and judgements[1].attempts == 3
        and judgements[1].assessment is None
    )
    assert (
        "rejected after 3 attempts" in judgements[1].error
        and "missing aspect" in judgements[1].error
    )


def test_openai_compatible_timeouts_and_server_errors_back_off_and_retry(endpoint, tmp_path):
    server = endpoint(
        [
            ("sleep", 1.5),
            ("status", 503),
            ("ok", GOOD),
            ("status", 500),
            ("status", 500),
            ("status", 500),
        ]
    )
    items = _corpus(tmp_path, 2)
    judgements = _remote(server.url, timeout=0.5, retries=2, concurrency=1).assess(items, tmp_path)
    assert (judgements[0].accepted, judgements[0].attempts) == (True, 3)  # timeout, 503, then fine
    assert not judgements[1].accepted and "HTTP 500" in judgements[1].error
    client_error = endpoint([("status", 400)])
    (judgement,) = _remote(client_error.url, retries=3).assess(items[:1], tmp_path)
    assert judgement.attempts == 1 and "HTTP 400" in judgement.error  # a bad request is not retried


def test_openai_compatible_respects_its_concurrency_limit(endpoint, tmp_path):
    server = endpoint([("sleep", 0.5)] * 6)
    start = time.perf_counter()
    judgements = _remote(server.url, concurrency=2).assess(_corpus(tmp_path, 3) * 2, tmp_path)
    # Never more than 2 in flight, so 6 half-second answers take at least 3 rounds (robust to a
    # loaded machine, which only makes it slower).
    assert all(j.accepted for j in judgements) and 1 <= server.max_in_flight <= 2
    assert time.perf_counter() - start >= 1.45


def test_openai_compatible_survives_hostile_servers(endpoint, tmp_path):
    """A huge reply is abandoned at its cap, a server dripping a byte at a time is cut off at the
    whole-request deadline, a hang-up or a reply that is not UTF-8 is retried: each item ends as
    an accepted or a rejected judgement, and assess() itself never raises."""
    server = endpoint(
        [
            ("huge", 80),
            ("huge", 80),  # 5 MB each, cap 100 KB
            ("drip", 40),
            ("drip", 40),  # 8 s each, deadline 1 s
            ("disconnect", None),
            ("ok", GOOD),  # hang-up, then fine
            ("badutf8", None),
            ("badutf8", None),
        ]
    )
    items = _corpus(tmp_path, 4)
    assessor = _remote(
        server.url, timeout=1.0, retries=1, concurrency=1, max_response_bytes=100_000
    )
    start = time.perf_counter()
    judgements = assessor.assess(items, tmp_path)
    assert time.perf_counter() - start < 8  # the drips were cut at about 1 s each
    assert [j.accepted for j in judgements] == [False, False, True, False]
    assert "over 100000 bytes" in judgements[0].error
    assert "within 1.0 s" in judgements[1].error
    assert judgements[2].attempts == 2
    assert "not UTF-8" in judgements[3].error


def test_openai_compatible_follows_no_redirect_and_sends_no_key_elsewhere(endpoint, tmp_path):
    elsewhere = endpoint([])
    server = endpoint([("redirect", elsewhere.url + "/chat/completions")])
    (judgement,) = _remote(server.url, retries=2).assess(_corpus(tmp_path, 1), tmp_path)
    assert not judgement.accepted and "redirects are not followed" in judgement.error
    assert judgement.attempts == 1 and elsewhere.requests == []


def test_openai_compatible_sends_only_images_inside_the_corpus(endpoint, tmp_path):
    server = endpoint([])
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    (tmp_path / "corpus").mkdir()
    outside = CorpusItem("x", "a red circle", "../secret.txt", str(secret), 0)
    not_an_image = CorpusItem("y", "a red circle", "notes.png", str(secret), 0)
    (tmp_path / "corpus" / "notes.png").write_text("not an image")
    judgements = _remote(server.url).assess([outside, not_an_image], tmp_path / "corpus")
    assert not any(j.accepted for j in judgements) and server.requests == []
    assert "outside its data set" in judgements[0].error
    assert "cannot load image" in judgements[1].error


def test_judgement_lines_round_trip(tmp_path):
    j = Judgement("a", "oracle", None, "bad", "raw", 2)
    assert Judgement(**json.loads(json.dumps(j.__dict__))) == j
    assert Prompt("a", "b", "c").spec is None


def test_continue_training_runs_under_any_seed(stages, captions, tmp_path, monkeypatch):
    # Both arms of the ablation continue stage 3 under seeds 0, 1, 2: the model's and the data's
    # seeds move together (Lightning refuses hparams that disagree).
    from illume.self_enhance.loop import continue_training

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "shapes").symlink_to(captions.parents[1])
    monkeypatch.chdir(tmp_path)
    out = continue_training(
        str(stages / "mllm"),
        str(stages / "tok"),
        "recipes/shapes/mllm_stage3.yaml",
        tmp_path / "run",
        steps=1,
        seed=1,
        progress=False,
        args=["--data.batch_size", "4", "--trainer.limit_val_batches", "0"],
    )
    assert (out / "config.json").is_file()


def test_self_enhancement_never_draws_a_held_out_composition(captions):
    """Rows of scenes that show a held-out composition are there to be read, never drawn."""
    rows = [json.loads(line) for line in Path(captions).read_text().splitlines()]
    reading_only = {f"captions-{i:06d}" for i, r in enumerate(rows) if not r["generation"]}
    assert reading_only, "the fixture's dataset should hold a held-out scene"
    prompts = prompts_from_captions(captions)
    assert len(prompts) == len(rows) - len(reading_only)
    for p in prompts:
        assert p.id not in reading_only
        assert not PromptSpec.from_geneval(p.spec).heldout_combinations()


def test_the_self_enhance_command_hands_its_arguments_to_the_loop(capsys):
    from illume.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["self-enhance", "--help"])
    assert exit_info.value.code == 0
    assert "--num_prompts" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # other commands still refuse what they lack
        main(["shapes", "audit", "somewhere", "--bogus"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
