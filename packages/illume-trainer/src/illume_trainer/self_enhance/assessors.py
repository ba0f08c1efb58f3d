"""Step 2 of self-enhancement: assessments of the drawn images, in the paper's JSON (Fig. C).

Three assessors, one protocol (`assess(items, corpus_dir) -> list[Judgement]`):

- `OracleAssessor`: illume-eval's exact ShapesWorld assessor (needs each prompt's spec);
- `ModelAssessor`: the MLLM itself answers the assessment instruction (self-assessment);
- `OpenAICompatibleAssessor`: any chat-completions endpoint that takes images (e.g. a local vLLM
  serving Qwen2.5-VL, the paper's Table C), with a timeout per request, retries with exponential
  backoff on timeouts, connection errors, 429 and 5xx, a limit on requests in flight, and strict
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
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from illume_core import load_image
from illume_eval.assessment import (
    ASSESSMENT_INSTRUCTION,
    AssessmentError,
    oracle_assessment,
    parse_assessment,
)
from illume_eval.shapes import PromptSpec

from .corpus import CorpusItem, append_log

ASSESSMENTS = "assessments.jsonl"


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
    """A chat-completions endpoint as the assessor (see the module docstring).

    Args:
        base_url: e.g. "http://localhost:8000/v1" (the request goes to base_url + "/chat/completions").
        model: the served model's name.
        api_key: sent as a Bearer token when given (default: $OPENAI_API_KEY if set).
        timeout: seconds per request.
        retries: further attempts after the first, for transport errors and malformed answers.
        backoff: first retry delay in seconds, doubled per retry (with jitter).
        concurrency: requests in flight at once.
    """

    name = "openai-compatible"

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 3, backoff: float = 1.0, concurrency: int = 4, max_tokens: int = 400):  # fmt: skip
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.timeout, self.retries, self.backoff = model, timeout, retries, backoff
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.concurrency, self.max_tokens = concurrency, max_tokens

    def _request(self, item: CorpusItem, corpus_dir: Path) -> bytes:
        png = (Path(corpus_dir) / item.image).read_bytes()
        body = {
            "model": self.model,
            "temperature": 0,
            "max_tokens": self.max_tokens,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}},
                {"type": "text", "text": instruction(item.prompt)},
            ]}],
        }  # fmt: skip
        return json.dumps(body).encode()

    def _post(self, payload: bytes) -> str:
        """One request -> the answer's text; raises _Retry for what another attempt may fix."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=payload, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                data = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as err:
            if err.code == 429 or err.code >= 500:
                raise _Retry(f"HTTP {err.code} from {self.url}") from None
            raise _Fatal(f"HTTP {err.code} from {self.url}: {err.read()[:200]!r}") from None
        except TimeoutError:
            raise _Retry(f"no answer from {self.url} within {self.timeout} s") from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, (TimeoutError, socket.timeout)):
                raise _Retry(f"no answer from {self.url} within {self.timeout} s") from None
            raise _Retry(f"cannot reach {self.url}: {err.reason}") from None
        except json.JSONDecodeError as err:
            raise _Retry(f"the endpoint's reply is not JSON: {err.msg}") from None
        try:
            return data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise _Retry("the reply has no choices[0].message.content") from None

    def _assess_one(self, item: CorpusItem, corpus_dir: Path) -> Judgement:
        payload = self._request(item, corpus_dir)
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
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                judgement = Judgement(**json.loads(line))
            except (json.JSONDecodeError, TypeError):
                continue
            if judgement.assessor == assessor:
                out[judgement.id] = judgement
    return out


def assess_corpus(assessor: Assessor, items: Sequence[CorpusItem], directory: str | os.PathLike, chunk: int = 32,
                  progress: bool = True) -> list[Judgement]:  # fmt: skip
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
