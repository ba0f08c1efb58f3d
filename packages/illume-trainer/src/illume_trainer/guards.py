"""The bad-sample ceiling: skipped samples are counted, reported, and stop a run past a limit.

Data loaders skip what they cannot read (missing, corrupt, oversized images) so that one bad file
never kills a week of training; but a run that skips a tenth of its data, or everything for a
while (a dismounted disk), is wrong. `BadSampleGuard` counts every skip, in order, and stops the
run with `TooManyBadSamples` when more than `max_fraction` of the samples seen (after `min_seen`)
or more than `max_in_a_row` consecutive samples were bad. It raises before the optimizer step of
that batch, so the checkpoints already written (atomically) are the last word: fix the data, then
resume from `last`. Its counts are saved in checkpoints, so a resumed run keeps counting.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_info


class TooManyBadSamples(RuntimeError):
    """Raised when the skipped samples pass the ceiling."""


def batch_is_empty(batch: dict) -> bool:
    """True when every sample of the batch was skipped (the step then trains on nothing)."""
    flags = batch.get("ok")
    return flags is not None and not any(flags)


class BadSampleGuard(L.Callback):
    """See the module docstring. Reads `batch["ok"]` (one flag per sample, in order) and
    `batch["errors"]` from the collate functions of illume_trainer.data / .conversations."""

    def __init__(
        self,
        max_fraction: float = 0.01,
        max_in_a_row: int = 50,
        min_seen: int = 500,
        examples: int = 5,
    ):
        if not 0 <= max_fraction <= 1 or max_in_a_row < 1:
            raise ValueError(
                f"need 0 <= max_fraction <= 1 and max_in_a_row >= 1, got {max_fraction}, {max_in_a_row}"
            )
        self.max_fraction, self.max_in_a_row, self.min_seen = max_fraction, max_in_a_row, min_seen
        self.keep = examples
        self.seen = self.skipped = self.in_a_row = 0
        self.examples: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        flags = batch.get("ok") if isinstance(batch, dict) else None
        if flags is None:
            return
        # a shard that cannot be read at all (illume_trainer.shards) is one event, however many
        # samples it held: its samples count towards the fraction, not the run of bad ones
        lost = batch.get("shard_lost") or [False] * len(flags)
        for ok, whole_shard in zip(flags, lost, strict=True):
            self.seen += 1
            if not whole_shard:
                self.in_a_row = 0 if ok else self.in_a_row + 1
            self.skipped += not ok
        room = self.keep - len(self.examples)
        if room > 0:
            self.examples += list(batch.get("errors", []))[:room]
        fraction = self.skipped / max(self.seen, 1)
        if self.in_a_row > self.max_in_a_row or (
            self.seen >= self.min_seen and fraction > self.max_fraction
        ):
            raise TooManyBadSamples(
                f"{self.skipped} of {self.seen} samples could not be read ({fraction:.1%}; {self.in_a_row} in a "
                f"row), past the ceiling of {self.max_fraction:.1%} or {self.max_in_a_row} in a row. First "
                f"errors: {'; '.join(self.examples) or 'none recorded'}. Fix or drop those files, then resume "
                "from the last checkpoint (--ckpt_path last); or raise the ceiling with the stage's "
                "max_skipped_fraction / max_skipped_in_a_row."
            )

    def on_train_end(self, trainer, pl_module) -> None:
        if self.skipped:
            rank_zero_info(
                f"illume: skipped {self.skipped} of {self.seen} samples ({self.skipped / self.seen:.2%}) that "
                f"could not be read; first errors: {'; '.join(self.examples)}"
            )

    def state_dict(self) -> dict:
        return {
            "seen": self.seen,
            "skipped": self.skipped,
            "in_a_row": self.in_a_row,
            "examples": self.examples,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.seen, self.skipped = state_dict["seen"], state_dict["skipped"]
        self.in_a_row, self.examples = state_dict["in_a_row"], list(state_dict["examples"])
