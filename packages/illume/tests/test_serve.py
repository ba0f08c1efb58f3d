"""`illume serve` on 127.0.0.1 with the tiny pipeline, driven by the official `openai` client and by
httpx: OpenAI's shapes, batching that does not change a request's drawing, back-pressure, and a
4xx naming the problem for every bad request."""

from __future__ import annotations

import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from illume.pipeline import IllumePipeline
from illume.serve import ServeSettings, create_app


@pytest.fixture(scope="module")
def pipe(pipeline_dir):
    pipe = IllumePipeline.from_pretrained(pipeline_dir)
    pipe.sampling.steps = 2  # the detokenizer's steps: the plumbing, not the pictures
    return pipe


@pytest.fixture(scope="module")
def live(pipe, live_server):
    settings = ServeSettings(batch_window_ms=300, max_batch=8, max_body_bytes=256 * 1024)
    with live_server(create_app(pipe, settings)) as server:
        yield server


def _image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _same_drawing(a: str, b: str) -> bool:
    """The same codes rendered: the detokenizer's batched float math may move a pixel by 1/255
    between batch sizes (the codes themselves are equal: tests/test_pipeline.py)."""
    x, y = (np.asarray(_image(v), dtype=int) for v in (a, b))
    return x.shape == y.shape and np.abs(x - y).max() <= 2 and (x != y).mean() < 0.01


def _data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(_png(image)).decode()


def test_the_openai_client_draws_edits_and_chats(live, pipe):
    from openai import OpenAI

    client = OpenAI(base_url=live.url + "/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == ["illume"]
    side = pipe.detokenizer.image_size
    drawn = client.images.generate(
        prompt="a red circle", n=2, size=f"{side}x{side}", extra_body={"seed": 5}
    )
    images = [_image(d.b64_json) for d in drawn.data]
    assert len(images) == 2 and all(im.size == (side, side) for im in images)
    again = client.images.generate(prompt="a red circle", n=1, extra_body={"seed": 5})
    assert _same_drawing(again.data[0].b64_json, drawn.data[0].b64_json)  # a seed, an image

    edited = client.images.edit(
        image=("source.png", _png(images[0]), "image/png"),
        prompt="make it green",
        extra_body={"seed": 3},
    )
    assert _image(edited.data[0].b64_json).size == (side, side)

    question = [
        {"type": "text", "text": "How many circles are there?"},
        {"type": "image_url", "image_url": {"url": _data_url(images[0])}},
    ]
    reply = client.chat.completions.create(
        model="illume", messages=[{"role": "user", "content": question}], max_tokens=8
    )
    answer = reply.choices[0].message.content
    assert isinstance(answer, str)
    assert reply.usage.prompt_tokens > pipe.processor.config.image_seq_length  # the image's slots
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    stream = client.chat.completions.create(
        model="illume", messages=[{"role": "user", "content": question}], max_tokens=8, stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces).strip() == answer  # greedy: the stream spells the same answer


def test_a_request_draws_the_same_image_batched_or_alone(live):
    """Four concurrent requests within the batch window share one batch (the metrics show it); each
    one's image equals the one drawn for its seed alone."""

    def draw(seed: int) -> str:
        body = {"prompt": f"a blue square number {seed}", "seed": seed}
        response = httpx.post(live.url + "/v1/images/generations", json=body, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()["data"][0]["b64_json"]

    alone = [draw(seed) for seed in range(4)]
    before = _batch_histogram(live)
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(draw, range(4)))
    after = _batch_histogram(live)
    assert all(_same_drawing(a, b) for a, b in zip(together, alone, strict=True))
    assert after["count"] - before["count"] < 4  # fewer batches than requests: they shared


def _batch_histogram(live) -> dict:
    text = httpx.get(live.url + "/metrics").text
    values = {}
    for line in text.splitlines():
        if line.startswith("illume_batch_rows_count"):
            values["count"] = float(line.split()[-1])
        if line.startswith("illume_batch_rows_sum"):
            values["sum"] = float(line.split()[-1])
    return values


BAD_REQUESTS = [
    # (what, method, path, body kwargs, status, words in the message)
    ("unknown field", "post", "/v1/images/generations", {"json": {"prompt": "x", "colour": 1}}, 400, "unknown field 'colour'"),
    ("wrong type", "post", "/v1/images/generations", {"json": {"prompt": "x", "n": "two"}}, 400, "n:"),
    ("too many images", "post", "/v1/images/generations", {"json": {"prompt": "x", "n": 99}}, 400, "n:"),
    ("empty prompt", "post", "/v1/images/generations", {"json": {"prompt": ""}}, 400, "prompt"),
    ("a size it cannot draw", "post", "/v1/images/generations", {"json": {"prompt": "x", "size": "1024x1024"}}, 400, "cannot be honoured"),
    ("url response format", "post", "/v1/images/generations", {"json": {"prompt": "x", "response_format": "url"}}, 400, "response_format"),
    ("negative guidance", "post", "/v1/images/generations", {"json": {"prompt": "x", "guidance_scale": -1}}, 400, "guidance_scale"),
    ("not JSON", "post", "/v1/images/generations", {"content": b"{nope", "headers": {"content-type": "application/json"}}, 400, "not JSON"),
    ("another model", "post", "/v1/images/generations", {"json": {"prompt": "x", "model": "dall-e-3"}}, 404, "not served here"),
    ("body over the limit", "post", "/v1/images/generations", {"json": {"prompt": "x" * 300_000}}, 413, "max_body_bytes"),
    ("edit as JSON", "post", "/v1/images/edits", {"json": {"prompt": "x"}}, 400, "multipart"),
    ("edit without an image", "post", "/v1/images/edits", {"data": {"prompt": "x"}, "files": {"other": ("a.txt", b"x")}}, 400, "only `image` is a file"),
    ("unreadable image", "post", "/v1/images/edits", {"data": {"prompt": "x"}, "files": {"image": ("a.png", b"not a png")}}, 400, "cannot load image"),
    ("remote image URL", "post", "/v1/chat/completions", {"json": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}]}]}}, 400, "only data:image"),
    ("bad base64 image", "post", "/v1/chat/completions", {"json": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}}, 400, "cannot load image"),
    ("unknown part type", "post", "/v1/chat/completions", {"json": {"messages": [{"role": "user", "content": [{"type": "audio", "data": "x"}]}]}}, 400, "messages.0.content"),
    ("ends with the assistant", "post", "/v1/chat/completions", {"json": {"messages": [{"role": "assistant", "content": "hi"}]}}, 400, "last message"),
    ("no messages", "post", "/v1/chat/completions", {"json": {"messages": []}}, 400, "messages"),
]  # fmt: skip


@pytest.mark.parametrize("what, method, path, kwargs, status, words", BAD_REQUESTS,
                         ids=[b[0] for b in BAD_REQUESTS])  # fmt: skip
def test_bad_requests_get_a_4xx_naming_the_problem(live, what, method, path, kwargs, status, words):
    response = getattr(httpx, method)(live.url + path, timeout=30, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error["message"], error
    assert httpx.get(live.url + "/health").json()["status"] == "ok"  # and it lives on


def test_an_image_over_the_pixel_limit_is_refused_naming_the_limit(pipe, live_server):
    settings = ServeSettings(max_image_pixels=32 * 32)
    big = _png(Image.new("RGB", (64, 64), (10, 10, 10)))
    with live_server(create_app(pipe, settings)) as server:
        response = httpx.post(
            server.url + "/v1/images/edits",
            data={"prompt": "make it green"},
            files={"image": ("big.png", big, "image/png")},
        )
        assert response.status_code == 400, response.text
        assert "4096 pixels is over the limit of 1024" in response.json()["error"]["message"]


def test_a_full_queue_refuses_with_429_and_loses_no_request(pipe, live_server):
    """Eight requests at once at a queue of two: each is answered (200) or refused (429 with
    Retry-After), none errors, and the server stays ready; a deadline shorter than a drawing is 504."""
    import asyncio

    settings = ServeSettings(max_queue=2, max_batch=1, batch_window_ms=0)
    with live_server(create_app(pipe, settings)) as server:

        async def burst():
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
                return await asyncio.gather(*[
                    client.post("/v1/images/generations", json={"prompt": "a circle", "seed": i})
                    for i in range(8)
                ])  # fmt: skip

        responses = asyncio.run(burst())
        statuses = sorted(r.status_code for r in responses)
        assert set(statuses) <= {200, 429} and 429 in statuses and 200 in statuses, statuses
        assert all(r.headers.get("retry-after") for r in responses if r.status_code == 429)
        assert httpx.get(server.url + "/health/ready").status_code == 200
        metrics = httpx.get(server.url + "/metrics").text
        assert 'illume_requests_total{route="/v1/images/generations",status="429"}' in metrics

    settings = ServeSettings(timeout_s=0.001)
    with live_server(create_app(pipe, settings)) as server:
        response = httpx.post(server.url + "/v1/images/generations", json={"prompt": "x"})
        assert response.status_code == 504 and "timed out" in response.json()["error"]["message"]


def test_bad_serve_command_lines_are_one_line_errors(pipeline_dir, tmp_path, capsys):
    from illume.cli import main

    for argv, expected in (
        (["--model", str(tmp_path / "missing")], "no such pipeline directory"),
        (["--model", str(pipeline_dir), "--port", "0"], "--port must be in 1..65535"),
        (["--model", str(pipeline_dir), "--max-batch", "0"], "--max-batch"),
        (["--model", str(pipeline_dir), "--timeout-s", "-1"], "--timeout-s"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["serve", *argv])
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and expected in err and len(err.splitlines()) == 1, err


def test_a_client_that_goes_away_frees_its_slot(pipe, live_server):
    """A request whose client disconnects while its batch gathers is dropped, never drawn."""
    settings = ServeSettings(batch_window_ms=1500)
    with live_server(create_app(pipe, settings)) as server:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/images/generations", json={"prompt": "x"}, timeout=0.3)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            metrics = httpx.get(server.url + "/metrics").text
            if 'illume_dropped_total{reason="cancelled"} 1.0' in metrics:
                break
            time.sleep(0.2)
        assert 'illume_dropped_total{reason="cancelled"} 1.0' in metrics
        assert "illume_batch_rows_count 0.0" in metrics  # nothing reached the model
        # a streamed conversation closed after its first event leaves the queue the same way
        body = {"messages": [{"role": "user", "content": "hello"}], "stream": True}
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body) as stream:
            next(stream.iter_lines())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            metrics = httpx.get(server.url + "/metrics").text
            if 'illume_dropped_total{reason="cancelled"} 2.0' in metrics:
                break
            time.sleep(0.2)
        assert 'illume_dropped_total{reason="cancelled"} 2.0' in metrics
        assert "illume_batch_rows_count 0.0" in metrics
        assert httpx.get(server.url + "/health/ready").status_code == 200


def test_illume_chat_talks_draws_and_keeps_the_drawing_in_the_conversation(
    pipeline_dir, tmp_path, monkeypatch, capsys
):
    """`illume chat` in a terminal: a question about an attached image, a drawing saved as a PNG
    (never over an earlier one), a bad path refused without losing the conversation, /reset."""
    import io as io_

    from illume.cli import main

    source = tmp_path / "source.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(source)
    out = tmp_path / "drawings"
    out.mkdir()
    (out / "drawing-001.png").write_bytes(b"an earlier chat's")
    lines = [f"/image {source}", "What colour is it?", "/image missing.png", "Draw a circle.",
             "And another one.", "/reset", "/quit"]  # fmt: skip
    monkeypatch.setattr("sys.stdin", io_.StringIO("\n".join(lines) + "\n"))
    code = main(["chat", "--model", str(pipeline_dir), "--out", str(out), "--max-new-tokens", "4"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "(attached" in printed and "(not attached: cannot load image" in printed
    assert printed.count("illume> ") == 3 and "(a new conversation)" in printed
    assert (out / "drawing-001.png").read_bytes() == b"an earlier chat's"
