"""`illume serve`: an OpenAI-compatible HTTP server over one `IllumePipeline`, loaded once.

    POST /v1/images/generations   text to image (OpenAI's request and response)
    POST /v1/images/edits         multipart image + prompt -> the edited image
    POST /v1/chat/completions     text and image_url parts (data: URLs); `stream: true` for
                                  server-sent events; a turn the model answers by drawing comes
                                  back as markdown holding the PNG as a data URL
    GET  /v1/models, /health (/health/live, /health/ready), /metrics (Prometheus text), / (a page)

Concurrent drawing requests with the same sampling settings share one CFG batch
(`illume.serve.batching`); each is drawn from its own seed, so a request's image is the same
batched or alone. Bad input is a 4xx with OpenAI's error body naming the problem; the server
never dies from a request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import io
import json
import os
import re
import secrets
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .batching import Batcher, BatchStats, Expired, QueueFull
from .schemas import (
    ChatCompletionRequest,
    ChatMessage,
    ImageData,
    ImageEditRequest,
    ImageGenerationRequest,
    ImagesResponse,
)

PAGE = Path(__file__).with_name("page.html")


class ServeSettings(BaseModel):
    """How the server batches and what it accepts."""

    model_config = ConfigDict(extra="forbid")

    max_batch: int = Field(16, ge=1)
    """Images (or answers) in one batch at most."""
    batch_window_ms: float = Field(20.0, ge=0)
    """How long the model waits for more requests to join a batch."""
    max_queue: int = Field(64, ge=1)
    """Requests waiting at most; one more gets 429 with Retry-After."""
    timeout_s: float = Field(120.0, gt=0)
    """A request not answered in this time gets 504 (and leaves the queue)."""
    max_body_bytes: int = Field(8 * 2**20, ge=1024)
    """Largest request body; a larger one gets 413."""
    max_image_pixels: int = Field(4096 * 4096, ge=1)
    """Largest input image, width x height (read from its header); a larger one gets 400."""
    model_name: str = "illume"
    """The id `GET /v1/models` reports and requests may name."""


class APIError(Exception):
    """An error answered with OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param,
                          "code": self.code}}  # fmt: skip


# -- images in and out ------------------------------------------------------------------------------

DATA_URL = re.compile(r"data:image/[A-Za-z0-9.+-]+;base64,([A-Za-z0-9+/=\s]+)")
MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\((data:image/[^)]+)\)")


def png_base64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_image(data: bytes, settings: ServeSettings, field: str):
    from illume_core import ImageLimits, load_image

    limits = ImageLimits(max_pixels=settings.max_image_pixels, max_bytes=settings.max_body_bytes)
    try:
        return load_image(data, limits=limits)
    except ValueError as err:  # the loader's advice, in the server's terms
        message = str(err).replace(
            "raise max_pixels", "start the server with a larger --max-image-pixels"
        )
        raise APIError(400, f"{field}: {message}", param=field, code="invalid_image") from None


def image_from_url(url: str, settings: ServeSettings, field: str):
    """An image_url part's image: data: URLs only (the server fetches nothing)."""
    match = DATA_URL.fullmatch(url.strip())
    if match is None:
        raise APIError(
            400,
            f"{field}: only data:image/...;base64 URLs are accepted (the server fetches nothing); "
            "embed the image as base64",
            param=field,
            code="invalid_image_url",
        )
    try:
        data = base64.b64decode(match.group(1), validate=False)
    except (binascii.Error, ValueError):
        raise APIError(400, f"{field}: the base64 data does not decode", param=field) from None
    return decode_image(data, settings, field)


# -- the server -------------------------------------------------------------------------------------


class Metrics:
    """Prometheus figures of one app (its own registry, so that two apps in a process never mix)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "illume_requests", "HTTP requests by route and status", ["route", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "illume_request_seconds", "Time from request to response, by route", ["route"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120), registry=self.registry,
        )  # fmt: skip
        self.batch_rows = Histogram(
            "illume_batch_rows", "Images or answers per model batch",
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            "illume_batch_seconds", "Model time per batch",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30), registry=self.registry,
        )  # fmt: skip
        self.dropped = Counter(
            "illume_dropped", "Requests dropped before the model reached them", ["reason"],
            registry=self.registry,
        )  # fmt: skip
        self.queue_depth = Gauge("illume_queue_depth", "Requests waiting", registry=self.registry)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class Server:
    """The model's side of the app: what one batch of each task does (on the worker thread)."""

    def __init__(self, pipe, settings: ServeSettings):
        self.pipe, self.settings = pipe, settings
        self.metrics = Metrics()
        stats = BatchStats(on_batch=self._batched, on_drop=self._dropped)
        self.batcher = Batcher(
            self._run,
            max_rows=settings.max_batch,
            window_s=settings.batch_window_ms / 1000,
            max_queue=settings.max_queue,
            stats=stats,
        )

    def _batched(self, rows: int, seconds: float) -> None:
        self.metrics.batch_rows.observe(rows)
        self.metrics.batch_seconds.observe(seconds)

    def _dropped(self, reason: str) -> None:
        self.metrics.dropped.labels(reason=reason).inc()

    @property
    def image_size(self) -> int:
        return int(self.pipe.detokenizer.image_size)

    @contextmanager
    def _sampling(self, overrides: dict[str, Any]):
        base = self.pipe.sampling
        try:
            self.pipe.sampling = dataclasses.replace(base, **overrides)
        except ValueError as err:
            raise APIError(400, str(err), code="invalid_sampling") from None
        try:
            yield
        finally:
            self.pipe.sampling = base

    def _run(self, key, payloads: Sequence[dict]) -> list:
        task, overrides = key[0], dict(key[1])
        with self._sampling(overrides):
            if task == "draw":
                prompts = [p["prompt"] for p in payloads for _ in p["seeds"]]
                seeds = [s for p in payloads for s in p["seeds"]]
                images = self.pipe.generate_image(prompts, seed=seeds)
            elif task == "edit":
                sources = [p["image"] for p in payloads for _ in p["seeds"]]
                prompts = [p["prompt"] for p in payloads for _ in p["seeds"]]
                seeds = [s for p in payloads for s in p["seeds"]]
                images = self.pipe.edit(sources, prompts, seed=seeds)
            else:  # a conversation runs alone; its earlier drawings become codes here, not on
                # the event loop
                (payload,) = payloads
                messages = self.pipe.drawings_as_codes(payload["messages"])
                answer = self.pipe.chat(
                    messages,
                    seed=payload["seeds"][0],
                    max_new_tokens=payload["max_new_tokens"],
                    streamer=payload.get("streamer"),
                )
                return [(answer, _usage(self.pipe.processor, messages, answer))]
        out, k = [], 0
        for p in payloads:
            out.append(images[k : k + len(p["seeds"])])
            k += len(p["seeds"])
        return out

    async def submit(self, task: str, payload: dict, overrides: dict, rows: int, request=None):
        """The batch's result for this request. Every quarter second it checks that the client is
        still there (`request`); one that went away leaves the queue (its slot freed) unanswered."""
        # requests of one task and sampling share batches; a conversation never does
        alone = secrets.token_hex(8) if task == "chat" else None
        key = (task, tuple(sorted(overrides.items())), alone)
        waiting = asyncio.ensure_future(
            self.batcher.submit(key, rows, payload, self.settings.timeout_s)
        )
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=0.25)
                if done:
                    return waiting.result()
                if request is not None and await request.is_disconnected():
                    raise APIError(499, "the client went away", code="client_closed")
        except (APIError, asyncio.CancelledError):  # gone, or a stream closed: leave the queue
            waiting.cancel()
            raise
        except QueueFull as err:
            raise APIError(429, f"the server is busy ({err}); retry shortly", code="queue_full",
                           headers={"Retry-After": "1"}) from None  # fmt: skip
        except Expired as err:
            raise APIError(504, f"the request timed out: {err}", code="timeout") from None
        except ValueError as err:  # the pipeline's checks of what a request asked for
            raise APIError(400, str(err)) from None

    def seeds(self, seed: int | None, n: int) -> list[int]:
        """One seed per image: the request's, counting up, or fresh ones (returned to the client)."""
        start = seed if seed is not None else secrets.randbelow(2**62)
        return [(start + i) % 2**63 for i in range(n)]

    def check_size(self, size: str | None) -> None:
        native = f"{self.image_size}x{self.image_size}"
        if size not in (None, "auto", native):
            raise APIError(
                400, f"size {size!r} cannot be honoured: this model draws {native} images "
                f"(send size={native!r} or leave it out)", param="size", code="invalid_size",
            )  # fmt: skip

    def check_model(self, model: str | None) -> None:
        if model not in (None, self.settings.model_name):
            raise APIError(
                404, f"model {model!r} is not served here; this server serves "
                f"{self.settings.model_name!r}", param="model", code="model_not_found",
            )  # fmt: skip


class _TextStream:
    """A transformers streamer that hands each new piece of text to the event loop."""

    def __init__(self, tokenizer, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue):
        self.tokenizer, self.loop, self.queue = tokenizer, loop, queue
        self.ids: list[int] = []
        self.sent = ""
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # generate hands the prompt first
            self.prompt_seen = True
            return
        self.ids += value.reshape(-1).tolist()
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if len(text) > len(self.sent) and not text.endswith("\ufffd"):
            delta, self.sent = text[len(self.sent) :], text
            self.loop.call_soon_threadsafe(self.queue.put_nowait, delta)

    def end(self) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)


def create_app(pipe, settings: ServeSettings | None = None):
    """The FastAPI application serving `pipe` (an IllumePipeline)."""
    settings = settings or ServeSettings()
    server = Server(pipe, settings)

    @asynccontextmanager
    async def lifespan(app):
        yield
        server.batcher.close()

    app = FastAPI(title="ILLUME", version=_version(), lifespan=lifespan)
    app.state.server = server

    def error(err: APIError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(APIError)
    async def _api_error(request, err: APIError):
        return error(err)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, err: RequestValidationError):
        return error(_validation_error(err.errors()))

    app.add_middleware(_Guard, settings=settings, metrics=server.metrics)

    async def body_json(request: Request) -> Any:
        body = await read_body(request)
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise APIError(400, f"the body is not JSON: {err}", code="invalid_json") from None

    async def read_body(request: Request) -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > settings.max_body_bytes:
                raise APIError(413, f"the body is over max_body_bytes={settings.max_body_bytes}",
                               code="body_too_large")  # fmt: skip
            chunks.append(chunk)
        return b"".join(chunks)

    def parse(model: type[BaseModel], data: Any):
        try:
            return model.model_validate(data)
        except ValidationError as err:
            raise _validation_error(err.errors()) from None

    def images_response(images, seeds) -> dict:
        data = [
            ImageData(b64_json=png_base64(im), seed=s) for im, s in zip(images, seeds, strict=True)
        ]
        return ImagesResponse(created=int(time.time()), data=data).model_dump(exclude_none=True)

    @app.post("/v1/images/generations")
    async def generations(request: Request):
        req = parse(ImageGenerationRequest, await body_json(request))
        server.check_model(req.model)
        server.check_size(req.size)
        seeds = server.seeds(req.seed, req.n)
        images = await server.submit("draw", {"prompt": req.prompt, "seeds": seeds},
                                     req.overrides(), rows=req.n, request=request)  # fmt: skip
        return images_response(images, seeds)

    @app.post("/v1/images/edits")
    async def edits(request: Request):
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise APIError(400, "send the edit as multipart/form-data (an `image` file part and a "
                           "`prompt` field), as OpenAI's images.edit does", code="invalid_body")  # fmt: skip
        try:
            form = await request.form(
                max_files=2, max_fields=32, max_part_size=settings.max_body_bytes
            )
        except Exception as err:
            raise APIError(400, f"the multipart body does not parse: {err}") from None
        fields, image = {}, None
        for name, value in form.multi_items():
            if name in ("image", "image[]"):
                if image is not None:
                    raise APIError(400, "one image per edit", param="image")
                if isinstance(value, str):
                    raise APIError(400, "image must be a file part", param="image")
                image = decode_image(await value.read(), settings, "image")
            elif isinstance(value, str):
                fields[name] = value
            else:
                raise APIError(400, f"unexpected file part {name!r}; only `image` is a file",
                               param=name)  # fmt: skip
        if image is None:
            raise APIError(
                400, "image is missing: send the image to edit as a file part", param="image"
            )
        req = parse(ImageEditRequest, fields)
        server.check_model(req.model)
        server.check_size(req.size)
        seeds = server.seeds(req.seed, req.n)
        images = await server.submit("edit", {"image": image, "prompt": req.prompt, "seeds": seeds},
                                     req.overrides(), rows=req.n, request=request)  # fmt: skip
        return images_response(images, seeds)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req = parse(ChatCompletionRequest, await body_json(request))
        server.check_model(req.model)
        messages = _messages(req.messages, settings)
        if not messages or messages[-1].role != "user":
            raise APIError(400, "the last message must be the user's", param="messages")
        seed = server.seeds(req.seed, 1)
        max_new = req.max_completion_tokens or req.max_tokens or 64
        created, ident = int(time.time()), "chatcmpl-" + secrets.token_hex(12)
        payload = {"messages": messages, "seeds": seed, "max_new_tokens": max_new}

        def chunk(delta: dict, finish: str | None = None) -> str:
            body = {"id": ident, "object": "chat.completion.chunk", "created": created,
                    "model": settings.model_name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
            return f"data: {json.dumps(body)}\n\n"

        if not req.stream:
            answer, usage = await server.submit(
                "chat", payload, req.overrides(), rows=1, request=request
            )
            content = _content(answer)
            return {
                "id": ident, "object": "chat.completion", "created": created,
                "model": settings.model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "finish_reason": "stop"}],
                "usage": usage,
                "seed": seed[0],
            }  # fmt: skip

        queue: asyncio.Queue = asyncio.Queue()
        payload["streamer"] = _TextStream(
            pipe.processor.tokenizer, asyncio.get_running_loop(), queue
        )
        task = asyncio.ensure_future(server.submit("chat", payload, req.overrides(), rows=1))

        async def events():
            yield chunk({"role": "assistant", "content": ""})
            try:
                while True:
                    getter = asyncio.ensure_future(queue.get())
                    done, _ = await asyncio.wait(
                        {getter, task}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if getter in done:
                        piece = getter.result()
                        if piece is None:
                            continue
                        yield chunk({"content": piece})
                        continue
                    getter.cancel()
                    while not queue.empty():  # what came before the end
                        piece = queue.get_nowait()
                        if piece is not None:
                            yield chunk({"content": piece})
                    answer, _ = task.result()
                    if not isinstance(answer, str):  # a drawing: it comes whole
                        yield chunk({"content": _content(answer)})
                    yield chunk({}, finish="stop")
                    break
            except APIError as err:
                yield f"data: {json.dumps(err.body())}\n\n"
            finally:
                if not task.done():
                    task.cancel()
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model",
                                            "created": 0, "owned_by": "illume"}]}  # fmt: skip

    @app.get("/health")
    @app.get("/health/ready")
    async def ready():
        if not server.batcher.alive:
            return JSONResponse({"status": "model worker stopped"}, status_code=503)
        return {"status": "ok", "queue": server.batcher.depth, "pid": os.getpid()}

    @app.get("/health/live")
    async def live():
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        server.metrics.queue_depth.set(server.batcher.depth)
        return Response(server.metrics.text(), media_type="text/plain; version=0.0.4")

    page_html = PAGE.read_text()  # shipped with the package

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(page_html)

    return app


class _Guard:
    """Pure ASGI middleware (a BaseHTTPMiddleware would hide a client's disconnect from the
    handlers): refuses a body declared over the limit (413), answers an unexpected error with a
    500 in OpenAI's shape instead of dropping the connection, and counts requests by route and
    status with their latency."""

    def __init__(self, app, settings: ServeSettings, metrics: Metrics):
        self.app, self.settings, self.metrics = app, settings, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route, start, status = scope["path"], time.perf_counter(), [500]
        started = [False]

        async def send_counted(message):
            if message["type"] == "http.response.start":
                status[0], started[0] = message["status"], True
            await send(message)

        async def answer(err: APIError):
            body = json.dumps(err.body()).encode()
            headers = [(b"content-type", b"application/json"),
                       (b"content-length", str(len(body)).encode())]  # fmt: skip
            headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
            await send_counted(
                {"type": "http.response.start", "status": err.status, "headers": headers}
            )
            await send({"type": "http.response.body", "body": body})

        length = dict(scope.get("headers", [])).get(b"content-length")
        limit = self.settings.max_body_bytes
        if length is not None and (not length.isdigit() or int(length) > limit):
            await answer(APIError(413, f"the body is over max_body_bytes={limit}",
                                  code="body_too_large"))  # fmt: skip
        else:
            try:
                await self.app(scope, receive, send_counted)
            except Exception as err:  # the server answers, and lives on
                if not started[0]:
                    await answer(APIError(500, f"internal error: {type(err).__name__}: {err}"))
        if route.startswith("/v1/"):
            self.metrics.requests.labels(route=route, status=str(status[0])).inc()
            self.metrics.latency.labels(route=route).observe(time.perf_counter() - start)


def _version() -> str:
    from .. import __version__

    return __version__


def _validation_error(errors: list[dict]) -> APIError:
    # the deepest error says the most: for a field that may be text or a list of parts, a wrong
    # part's error, not "Input should be a valid string"
    first = max(errors, key=lambda e: len(e.get("loc", ())))
    branch = re.compile(r"^(str|int|float|bool|list\[.*\]|function-.*|tagged-union\[.*\])$")
    where = (
        ".".join(str(p) for p in first.get("loc", ()) if p != "body" and not branch.match(str(p)))
        or "body"
    )
    message = first.get("msg", "invalid")
    if first.get("type") == "extra_forbidden":
        message = f"unknown field {where!r}"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return APIError(400, f"{where}: {message}{more}", param=where, code="invalid_value")


def _usage(processor, messages, answer) -> dict:
    """Tokens of the prompt as the processor lays it out (an image counts its slots; the codes a
    model with `edit_source_codes` also reads after an image it edits are not counted) and of the
    answer (a drawing: its image tokens)."""
    prompt = len(processor.encode_conversation(messages, add_generation_prompt=True).input_ids)
    if isinstance(answer, str):
        completion = len(processor.text_ids(answer)) + 1  # and the end of the turn
    else:
        h, w = processor.config.image_grid
        completion = h * (w + 1) + 2 + 1  # <start_of_image>, rows with <end_of_line>, the end
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}  # fmt: skip


def _content(answer) -> str:
    """A chat answer as message content: text, or a drawing as markdown with a PNG data URL."""
    if isinstance(answer, str):
        return answer
    return f"![image](data:image/png;base64,{png_base64(answer)})"


def _messages(messages: list[ChatMessage], settings: ServeSettings):
    """OpenAI messages -> illume Messages, data-URL images decoded (an assistant turn's image is an
    earlier drawing sent back as the server returned it; `IllumePipeline.drawings_as_codes` makes
    it the codes the model drew)."""
    from illume_core import Message

    out = []
    for i, message in enumerate(messages):
        if message.role == "system":
            continue  # the processor's chat template has the system prompt
        parts: list = []
        items = message.content if isinstance(message.content, list) else [message.content]
        for j, item in enumerate(items):
            field = f"messages.{i}.content" + (f".{j}" if isinstance(message.content, list) else "")
            if isinstance(item, str) or getattr(item, "type", None) == "text":
                text = item if isinstance(item, str) else item.text
                pos = 0
                for match in MARKDOWN_IMAGE.finditer(text):
                    if text[pos : match.start()].strip():
                        parts.append(text[pos : match.start()].strip())
                    parts.append(image_from_url(match.group(1), settings, field))
                    pos = match.end()
                if text[pos:].strip():
                    parts.append(text[pos:].strip())
            else:
                parts.append(image_from_url(item.image_url.url, settings, field))
        if not parts:
            raise APIError(400, f"messages.{i}: empty content", param=f"messages.{i}.content")
        out.append(Message("user" if message.role == "user" else "assistant", parts))
    return out
