"""Step 2 of self-enhancement: assessments of the drawn images, in the paper's JSON (Fig. C).

Three assessors, one protocol (`assess(items, corpus_dir) -> list[Judgement]`):

- `OracleAssessor`: illume-eval's exact ShapesWorld assessor (needs each prompt's spec);
- `ModelAssessor`: the MLLM itself answers the assessment instruction (self-assessment);
- `OpenAICompatibleAssessor`: any chat-completions endpoint that takes images (e.g. a local vLLM
  serving Qwen2.5-VL, the paper's Table C), on httpx, with a deadline per request, a cap on the
  reply's size, no redirects, retries with exponential backoff on timeouts, transport errors,
  429 and 5xx, a limit on requests and connections in flight, and strict
  validation: an answer that does not parse as assessment JSON is asked again, then recorded as
  rejected with the reason. Nothing malformed is ever kept.

Every judgement, accepted or rejected, is one line of `assessments.jsonl` (see `assess_corpus`),
so a rerun assesses only what is missing.
"""

from __future__ import annotations

import base64
import json
import os
import random
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from illume_core import MAX_DATA_BYTES, load_image, read_bounded, read_text, resolve_inside
from illume_eval.assessment import (
    ASSESSMENT_INSTRUCTION,
    AssessmentError,
    oracle_assessment,
    parse_assessment,
)
from illume_eval.shapes import PromptSpec

from .corpus import CorpusItem, append_log

ASSESSMENTS = "assessments.jsonl"
#: The largest drawing sent to an assessor endpoint.
MAX_IMAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Judgement:
    """An assessor's verdict on one item: `assessment` (the validated JSON object) when accepted,
    else `error` says why it was rejected; `raw` is the last answer received, `attempts` how many."""

    id: str
    assessor: str
    assessment: dict | None
    error: str | None = None
    raw: str | None = None
    attempts: int = 1

    @property
    def accepted(self) -> bool:
        return self.assessment is not None


class Assessor(Protocol):
    name: str

    def assess(self, items: Sequence[CorpusItem], corpus_dir: Path) -> list[Judgement]: ...


def instruction(prompt: str) -> str:
    return ASSESSMENT_INSTRUCTION.format(prompt=prompt)


class OracleAssessor:
    """The exact ShapesWorld assessor: detection + the prompt's spec."""

    name = "oracle"

    def assess(self, items: Sequence[CorpusItem], corpus_dir: Path) -> list[Judgement]:
        out = []
        for item in items:
            if item.spec is None:
                raise ValueError(
                    f"{item.id} has no spec: the oracle assessor needs ShapesWorld prompts (captions manifests "
                    "with a 'spec'); use the model or openai-compatible assessor for other data"
                )
            image = load_image(Path(corpus_dir) / item.image)
            assessment = oracle_assessment(PromptSpec.from_geneval(item.spec), image)
            out.append(
                Judgement(item.id, self.name, assessment.to_dict(), raw=assessment.to_json())
            )
        return out


class ModelAssessor:
    """Self-assessment: the MLLM answers the assessment instruction for its own image. The first
    answer is greedy; a malformed one is asked again with sampling (`retries` times), then rejected."""

    name = "model"

    def __init__(
        self,
        model,
        processor,
        batch_size: int = 16,
        max_new_tokens: int = 256,
        retries: int = 2,
        seed: int = 0,
    ):
        self.model, self.processor = model, processor
        self.batch_size, self.max_new_tokens, self.retries, self.seed = (
            batch_size,
            max_new_tokens,
            retries,
            seed,
        )

    def _answers(self, items: Sequence[CorpusItem], corpus_dir: Path, sample: bool) -> list[str]:
        import torch

        from illume_core import Message
        from illume_mllm import generate_text

        conversations = [
            [Message("user", [load_image(Path(corpus_dir) / item.image), instruction(item.prompt)])]
            for item in items
        ]
        kwargs = {"do_sample": True, "temperature": 0.7} if sample else {}
        if sample:
            torch.manual_seed(self.seed)
        return generate_text(
            self.model, self.processor, conversations, max_new_tokens=self.max_new_tokens, **kwargs
        )

    def assess(self, items: Sequence[CorpusItem], corpus_dir: Path) -> list[Judgement]:
        out = []
        for start in range(0, len(items), self.batch_size):
            batch = list(items[start : start + self.batch_size])
            verdicts: dict[str, Judgement] = {}
            for attempt in range(1 + self.retries):
                pending = [
                    item
                    for item in batch
                    if item.id not in verdicts or not verdicts[item.id].accepted
                ]
                if not pending:
                    break
                for item, text in zip(
                    pending, self._answers(pending, corpus_dir, sample=attempt > 0), strict=True
                ):
                    try:
                        assessment = parse_assessment(text).to_dict()
                        verdicts[item.id] = Judgement(
                            item.id, self.name, assessment, raw=text, attempts=attempt + 1
                        )
                    except AssessmentError as err:
                        verdicts[item.id] = Judgement(
                            item.id, self.name, None, str(err), text, attempt + 1
                        )
            out += [verdicts[item.id] for item in batch]
        return out


class OpenAICompatibleAssessor:
    """A chat-completions endpoint as the assessor (see the module docstring), on httpx.

    Every request has a whole-request deadline (`timeout`, not per socket read: a server that
    drips a byte at a time is cut off), a cap on the reply's size (`max_response_bytes`, read as
    a stream and abandoned past it), no redirects (a 3xx is a rejection, so the API key never
    travels to another host), and at most `concurrency` connections. Every transport failure
    (refused, reset, cut short, timed out) and every garbled reply is retried, then recorded as a
    rejection: `assess` never raises for one item.

    Args:
        base_url: e.g. "http://localhost:8000/v1" (the request goes to base_url + "/chat/completions").
        model: the served model's name.
        api_key: sent as a Bearer token when given (default: $OPENAI_API_KEY if set).
        timeout: seconds a request may take, from connecting to the reply's last byte.
        retries: further attempts after the first, for transport errors and malformed answers.
        backoff: first retry delay in seconds, doubled per retry (with jitter).
        concurrency: requests in flight at once (and connections kept).
        max_tokens: the assessment's length limit sent to the endpoint.
        max_response_bytes: the largest reply read.
    """

    name = "openai-compatible"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 1.0,
        concurrency: int = 4,
        max_tokens: int = 400,
        max_response_bytes: int = 1 << 20,
    ):
        import httpx

        if timeout <= 0 or retries < 0 or concurrency < 1 or max_response_bytes < 1:
            raise ValueError(
                f"timeout must be > 0, retries >= 0, concurrency >= 1 and max_response_bytes >= 1; "
                f"got {timeout}, {retries}, {concurrency}, {max_response_bytes}"
            )
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.timeout, self.retries, self.backoff = model, timeout, retries, backoff
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.concurrency, self.max_tokens = concurrency, max_tokens
        self.max_response_bytes = max_response_bytes
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            trust_env=False,  # no proxy from the environment: the endpoint named is the one used
        )

    def _request(self, item: CorpusItem, corpus_dir: Path) -> bytes:
        # The drawing the corpus holds: inside the corpus, a regular file, bounded, and an image.
        path = resolve_inside(corpus_dir, item.image)
        png = read_bounded(path, MAX_IMAGE_BYTES)
        load_image(png)  # raises ImageLoadError for anything that is not an image
        body = {
            "model": self.model,
            "temperature": 0,
            "max_tokens": self.max_tokens,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image_url",
                            "image_url": {
                                "url": "data:image/png;base64," + base64.b64encode(png).decode()
                            },
                        },
                        {"type": "text", "text": instruction(item.prompt)},
                    ],
                }
            ],
        }
        return json.dumps(body).encode()

    def _post(self, payload: bytes) -> str:
        """One request -> the answer's text; raises _Retry for what another attempt may fix."""
        import httpx

        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        deadline = time.monotonic() + self.timeout
        try:
            with self._client.stream(
                "POST", self.url, content=payload, headers=headers
            ) as response:
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > self.max_response_bytes:
                        raise _Retry(
                            f"the reply from {self.url} is over {self.max_response_bytes} bytes"
                        )
                    if time.monotonic() > deadline:
                        raise _Retry(f"no whole answer from {self.url} within {self.timeout} s")
                status = response.status_code
        except httpx.TimeoutException:
            raise _Retry(f"no answer from {self.url} within {self.timeout} s") from None
        except httpx.HTTPError as err:  # refused, reset, cut short, a broken protocol
            raise _Retry(f"cannot talk to {self.url}: {type(err).__name__}: {err}") from None
        if 300 <= status < 400:
            raise _Fatal(f"HTTP {status} from {self.url}: redirects are not followed")
        if status == 429 or status >= 500:
            raise _Retry(f"HTTP {status} from {self.url}")
        if status >= 400:
            raise _Fatal(f"HTTP {status} from {self.url}: {bytes(body[:200])!r}")
        try:
            data = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise _Retry("the endpoint's reply is not UTF-8") from None
        except json.JSONDecodeError as err:
            raise _Retry(f"the endpoint's reply is not JSON: {err.msg}") from None
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise _Retry("the reply has no choices[0].message.content") from None
        if not isinstance(content, str):
            raise _Retry("the reply's message content is not text")
        return content

    def _assess_one(self, item: CorpusItem, corpus_dir: Path) -> Judgement:
        try:
            payload = self._request(item, corpus_dir)
        except (OSError, ValueError) as err:  # outside the corpus, not a file, not an image
            return Judgement(item.id, self.name, None, f"cannot send the drawing: {err}", None, 0)
        error, raw = None, None
        for attempt in range(1 + self.retries):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1) * (1 + 0.25 * random.random()))
            try:
                raw = self._post(payload)
                return Judgement(
                    item.id,
                    self.name,
                    parse_assessment(raw).to_dict(),
                    raw=raw,
                    attempts=attempt + 1,
                )
            except _Fatal as err:
                return Judgement(item.id, self.name, None, str(err), raw, attempt + 1)
            except (_Retry, AssessmentError) as err:
                error = (
                    f"{'malformed assessment: ' if isinstance(err, AssessmentError) else ''}{err}"
                )
        return Judgement(
            item.id,
            self.name,
            None,
            f"rejected after {1 + self.retries} attempts: {error}",
            raw,
            1 + self.retries,
        )

    def assess(self, items: Sequence[CorpusItem], corpus_dir: Path) -> list[Judgement]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda item: self._assess_one(item, corpus_dir), items))


class _Retry(Exception):
    """A failure another attempt may fix (timeout, 429, 5xx, a garbled reply)."""


class _Fatal(Exception):
    """A failure no retry fixes (4xx other than 429: the request itself is wrong)."""


def read_judgements(directory: str | os.PathLike, assessor: str) -> dict[str, Judgement]:
    path = Path(directory) / ASSESSMENTS
    out = {}
    if path.is_file():
        for line in read_text(path, MAX_DATA_BYTES).splitlines():
            try:
                judgement = Judgement(**json.loads(line))
            except (json.JSONDecodeError, TypeError):
                continue
            if judgement.assessor == assessor:
                out[judgement.id] = judgement
    return out


def assess_corpus(
    assessor: Assessor,
    items: Sequence[CorpusItem],
    directory: str | os.PathLike,
    chunk: int = 32,
    progress: bool = True,
) -> list[Judgement]:
    """Judges every item not yet judged by this assessor, appending to `assessments.jsonl` as it
    goes; returns the judgements of all items, in order."""
    from rich.progress import Progress

    directory = Path(directory)
    done = read_judgements(directory, assessor.name)
    todo = [item for item in items if item.id not in done]
    with (
        Progress(disable=not progress, transient=True) as bar,
        append_log(directory / ASSESSMENTS) as log,
    ):
        task = bar.add_task(f"assessment ({assessor.name})", total=len(todo))
        for start in range(0, len(todo), chunk):
            for judgement in assessor.assess(todo[start : start + chunk], directory):
                log.write(json.dumps(asdict(judgement)) + "\n")
                done[judgement.id] = judgement
            log.flush()
            os.fsync(log.fileno())
            bar.advance(task, len(todo[start : start + chunk]))
    return [done[item.id] for item in items]
