"""Callbacks the resume test injects into a training run (fault injection, batch recording)."""

import json
import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    """SIGKILLs the process once `step` optimizer steps are done (after their checkpoint)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class RecordBatches(L.Callback):
    """Appends {"step", "index"} of every training batch to a JSONL file."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if "index" in batch:  # image-text batches
            index = batch["index"].tolist()
        else:  # conversation batches: the samples' ids and places in their stream
            index = [[item.id, item.index] for item in batch["items"]]
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"step": trainer.global_step, "index": index}) + "\n")
