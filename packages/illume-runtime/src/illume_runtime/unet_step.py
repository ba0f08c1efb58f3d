"""The detokenizer's U-Net step through an exported graph (`unet_step.onnx`).

`DetokenizerPipeline.use_unet_step(OnnxUNetStep(models))` denoises with it: the same prediction as
`DetokenizerPipeline.predict` (the channels the pipeline adds to the sample are inside the
graph), computed by ONNX Runtime (or a TensorRT engine). `IllumePipeline.use_runtime("onnx")` and
"onnx-tensorrt" set it.
"""

from __future__ import annotations

import numpy as np
import torch


class OnnxUNetStep:
    """`step(sample, t, conditions) -> prediction` over an export's `unet_step` graph; `models`:
    an OnnxModels or TensorRTModels (anything with `run(name, **arrays)` and `manifest`)."""

    def __init__(self, models):
        graph = models.manifest["graphs"].get("unet_step")
        if graph is None:
            raise KeyError(
                f"{models.directory} has no unet_step graph: export the pipeline again "
                "(`illume export --model DIR --out DIR`)"
            )
        self.models = models
        self.inputs = list(graph["inputs"])

    def __call__(self, sample: torch.Tensor, t: torch.Tensor, conditions) -> torch.Tensor:
        given = {
            "sample": sample,
            "timestep": t,
            "encoder_hidden_states": conditions.encoder_hidden_states,
            "spatial": conditions.spatial,
            "text_embeds": conditions.pooled,
        }
        missing = [name for name in self.inputs if given.get(name) is None]
        if missing:
            raise ValueError(
                f"the exported U-Net step takes {missing}, which these conditions lack"
            )
        # the graph was exported in float32: a bf16 pipeline's tensors are cast there and back
        feeds = {
            name: np.ascontiguousarray(given[name].detach().float().cpu().numpy())
            for name in self.inputs
        }
        (prediction,) = self.models.run("unet_step", **feeds)
        return torch.from_numpy(np.asarray(prediction)).to(sample.device, sample.dtype)
