"""The `illume` model of lmms-eval: a saved IllumePipeline answering lmms-eval's image questions.

    pip install 'illume[lmms-eval]'
    python -m lmms_eval --model illume --model_args pretrained=illume-demo/pipeline \
        --tasks shapes_qa --include_path tasks/shapes_qa --batch_size 16

lmms-eval finds it through the `lmms_eval.models` entry point of this package (`manifest`), as
ILLUME+ ships its own. `model_args`: `pretrained` (a pipeline directory), `device` and `dtype` (as
`illume answer --device/--dtype`), `max_new_tokens` (when a task sets none). Answers are greedy,
as `IllumePipeline.answer` gives them; `loglikelihood` scores a continuation with the MLLM.
"""

from __future__ import annotations

from argparse import Namespace

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from PIL import Image

from illume_core import Message

manifest = ModelManifest(model_id="illume", simple_class_path="illume.lmms_eval_model.IllumeLMM")


class IllumeLMM(lmms):
    """See the module docstring."""

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        device: str | None = "auto",
        dtype: str = "auto",
        batch_size: int | str = 8,
        max_new_tokens: int = 32,
        **unused,
    ) -> None:
        super().__init__()
        from .commands.tasks import placement
        from .pipeline import IllumePipeline

        if unused:
            raise ValueError(
                f"the illume model takes no {', '.join(sorted(unused))} (model_args: pretrained, "
                "device, dtype, max_new_tokens)"
            )
        device = device or "auto"  # lmms-eval passes its --device, None when not given
        self.pipe = IllumePipeline.from_pretrained(
            pretrained, *placement(Namespace(device=device, dtype=dtype))
        )
        self.batch_size_per_gpu = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    def _conversation(self, request: Instance) -> tuple[list[Message], dict]:
        context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args[:6]
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        images = [v.convert("RGB") for v in visuals if isinstance(v, Image.Image)]
        if len(images) != len(visuals):
            raise ValueError("the illume model reads images only (no video or audio)")
        return [Message("user", [*images, context])], dict(gen_kwargs or {})

    def generate_until(self, requests: list[Instance]) -> list[str]:
        from illume_mllm import generate_text

        answers: list[str] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            conversations, settings = zip(*(self._conversation(r) for r in chunk), strict=True)
            # one budget for the chunk: the largest asked (a task asks the same of all its docs)
            budget = max(int(s.get("max_new_tokens", self.max_new_tokens)) for s in settings)
            texts = generate_text(
                self.pipe.model, self.pipe.processor, list(conversations), max_new_tokens=budget
            )
            for text, s in zip(texts, settings, strict=True):
                until = s.get("until") or []
                for stop in [until] if isinstance(until, str) else until:
                    if stop and stop in text:
                        text = text[: text.index(stop)]
                answers.append(text)
        return answers

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """log p(continuation | context, images), and whether greedy decoding writes it."""
        from illume_mllm import answer_log_likelihood, generate_text

        out = []
        for request in requests:
            context, target, doc_to_visual, doc_id, task, split = request.args[:6]
            doc = self.task_dict[task][split][doc_id]
            continuation = target if isinstance(target, str) else target(doc)
            visuals = [v.convert("RGB") for v in (doc_to_visual(doc) or [])]
            asked = Message("user", [*visuals, context])
            score = answer_log_likelihood(
                self.pipe.model,
                self.pipe.processor,
                [[asked, Message("assistant", continuation)]],
            )
            length = len(self.pipe.processor.text_ids(continuation)) + 1
            greedy = generate_text(
                self.pipe.model, self.pipe.processor, [[asked]], max_new_tokens=length
            )[0]
            out.append((float(score[0]), greedy.strip() == continuation.strip()))
        return out

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("the illume model answers single-round tasks")
