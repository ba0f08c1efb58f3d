"""The MLLM's language model as one flat module over its own weights, for fast loops and export.

transformers' Llama is general (cache classes, mask builders, hooks, output dataclasses); a decode
step of a small model spends most of its time there rather than in matrix products. `FlatDecoder`
is the same arithmetic written out once (RMSNorm, rotary attention, gated MLP), over the *same*
parameter tensors (on a CPU, fused copies of them: see `fuse`), in two forms:

- `forward_static`: a preallocated KV cache [L, B, Hkv, S, hd] written in place at `slot`, attention
  over all S slots with an additive mask: fixed shapes, no allocations that grow with the sequence,
  CUDA-graph friendly. Used by `TorchImageGenerator`.
- `forward_past`: the past keys/values passed in and the presents returned (the optimum /
  onnxruntime-genai convention). Used for the ONNX prefill and decode graphs.

`attention_form="contrib"` writes each layer's rotary embedding and attention (with the cache's
concatenation) as one custom operator each, `illume::rotary_embedding` and
`illume::attention_after_past`: PyTorch runs them as the same arithmetic, and the ONNX exporter
maps them to ONNX Runtime's fused RotaryEmbedding and MultiHeadAttention kernels
(`illume_runtime.export`), a decode step's dozens of small operators per layer in two.

Llama-family decoders only (Llama, Vicuna, Mistral without sliding windows, Qwen2): a model with
anything else raises, naming what it lacks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED = ("llama", "mistral", "qwen2")
#: FlatDecoder's ways of writing RMSNorm (see its docstring).
NORM_FORMS = ("rsqrt", "divide")
#: FlatDecoder's ways of writing rotary attention (see the module docstring).
ATTENTION_FORMS = ("decomposed", "contrib")


# -- two operators as ONNX Runtime's contrib kernels define them ----------------------------------


@torch.library.custom_op("illume::rotary_embedding", mutates_args=())
def rotary_embedding(
    x: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int
) -> torch.Tensor:
    """x [B, T, H * hd] rotated at positions [B, T] by the half tables cos, sin [P, hd / 2]
    (rotate-half, not interleaved): ONNX Runtime's com.microsoft.RotaryEmbedding."""
    b, t, d = x.shape
    half = d // heads // 2
    cos = torch.cat([cos, cos], dim=-1)[positions][:, :, None]  # [B, T, 1, hd]
    sin = torch.cat([sin, sin], dim=-1)[positions][:, :, None]
    x = x.view(b, t, heads, 2 * half)
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos + rotated * sin).reshape(b, t, d)


@rotary_embedding.register_fake
def _(x, positions, cos, sin, heads):
    return torch.empty_like(x)


@torch.library.custom_op("illume::attention_after_past", mutates_args=())
def attention_after_past(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    past_key: torch.Tensor,
    past_value: torch.Tensor,
    heads: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v [B, T, H * hd] after past_key / past_value [B, H, P, hd], additive bias
    [B, 1, T, P + T] -> attended [B, T, H * hd] and the presents [B, H, P + T, hd]: ONNX Runtime's
    com.microsoft.MultiHeadAttention (one head count for queries and keys)."""
    b, t, d = q.shape

    def split(x):  # [B, T, H * hd] -> [B, H, T, hd]
        return x.view(b, t, heads, d // heads).transpose(1, 2)

    key, value = torch.cat([past_key, split(k)], dim=2), torch.cat([past_value, split(v)], dim=2)
    weights = torch.softmax((split(q) @ key.transpose(-1, -2)) * scale + bias, dim=-1)
    return (weights @ value).transpose(1, 2).reshape(b, t, d), key, value


@attention_after_past.register_fake
def _(q, k, v, bias, past_key, past_value, heads, scale):
    b, t, d = q.shape
    present = (b, heads, past_key.shape[2] + t, d // heads)
    return torch.empty_like(q), past_key.new_empty(present), past_value.new_empty(present)


@dataclass(frozen=True)
class DecoderShape:
    """Sizes of the language model: L layers, H query heads, Hkv key/value heads of width hd."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int


def language_parts(model) -> tuple[nn.Module, nn.Module]:
    """(the decoder stack, the LM head) of an IllumeForConditionalGeneration or a causal LM."""
    if hasattr(model, "language_model") and hasattr(model, "lm_head"):
        return model.language_model, model.lm_head
    if hasattr(model, "model") and hasattr(model, "lm_head"):
        return model.model, model.lm_head
    raise TypeError(f"{type(model).__name__} has no language model and LM head to run")


class FlatDecoder(nn.Module):
    """See the module docstring. `max_positions` bounds the rotary table (prompt + generated).

    `fuse` (default: when the weights are on the CPU) packs each layer's q/k/v and gate/up
    projections into one matrix each, stored input-major: a decode step multiplies a couple of
    rows by each matrix, and on a CPU fewer, larger, contiguous products are markedly faster. The
    packed copies are made once, so a decoder with `fuse` is for inference on frozen weights (and
    costs their size again; on a GPU, where it would double the memory, it is off by default).

    `attention_form`: "decomposed" (the default) or "contrib", each layer's rotary embedding and
    attention as two custom operators that export to ONNX Runtime's fused kernels (see the module
    docstring; `forward_past` only, and only for models with as many key/value heads as query
    heads, as MultiHeadAttention takes them).

    `norm_form`: how RMSNorm divides by the root mean square. "rsqrt" multiplies by its reciprocal
    square root, transformers' Llama arithmetic to the bit, so the PyTorch loops draw the
    reference's codes. "divide" divides by the square root: the same function within float
    rounding, written as ONNX Runtime's graph optimizer recognises it, which fuses the five
    operators into one SimplifiedLayerNormalization kernel (the exporter's choice).
    """

    def __init__(
        self,
        model,
        max_positions: int | None = None,
        fuse: bool | None = None,
        norm_form: str = "rsqrt",
        attention_form: str = "decomposed",
    ):
        super().__init__()
        if norm_form not in NORM_FORMS:
            raise ValueError(f"norm_form must be one of {NORM_FORMS}, got {norm_form!r}")
        if attention_form not in ATTENTION_FORMS:
            raise ValueError(
                f"attention_form must be one of {ATTENTION_FORMS}, got {attention_form!r}"
            )
        self.norm_form, self.attention_form = norm_form, attention_form
        lm, head = language_parts(model)
        config = lm.config
        if config.model_type not in SUPPORTED or getattr(config, "sliding_window", None):
            raise NotImplementedError(
                f"FlatDecoder runs Llama-family decoders ({', '.join(SUPPORTED)}, no sliding window); "
                f"this model is {config.model_type!r}: use the reference runtime (runtime='reference')"
            )
        attn = lm.layers[0].self_attn
        head_dim = (
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        self.shape = DecoderShape(
            layers=len(lm.layers),
            hidden=config.hidden_size,
            heads=config.num_attention_heads,
            kv_heads=config.num_key_value_heads,
            head_dim=head_dim,
            vocab=head.weight.shape[0],
        )
        if attention_form == "contrib" and self.shape.kv_heads != self.shape.heads:
            raise ValueError(
                f"attention_form='contrib' takes as many key/value heads as query heads "
                f"(ONNX Runtime's MultiHeadAttention); this model has {self.shape.kv_heads} for "
                f"{self.shape.heads}: use attention_form='decomposed'"
            )
        self.embed_tokens, self.layers, self.norm, self.lm_head = (
            lm.embed_tokens,
            lm.layers,
            lm.norm,
            head,
        )
        # row and column embeddings of output codes (IllumeConfig.grid_embeddings), or None
        self.grid_embedding = getattr(model, "grid_embedding", None)
        self.scaling = float(getattr(attn, "scaling", head_dim**-0.5))
        self.fused = head.weight.device.type == "cpu" if fuse is None else fuse
        self.packed = [self._pack(layer) for layer in lm.layers] if self.fused else None
        max_positions = max_positions or config.max_position_embeddings
        # cos / sin of every position, from the model's own rotary module (its scaling included).
        positions = torch.arange(max_positions, device=head.weight.device)[None]
        probe = torch.zeros(1, dtype=head.weight.dtype, device=head.weight.device)
        cos, sin = lm.rotary_emb(probe, positions)
        self.register_buffer("cos", cos[0], persistent=False)  # [P, hd]
        self.register_buffer("sin", sin[0], persistent=False)  # [P, hd]

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    # -- pieces -----------------------------------------------------------------------------------

    @staticmethod
    @torch.no_grad()
    def _pack(layer) -> dict[str, torch.Tensor | None]:
        """One layer's projections as input-major matrices [D_in, D_out] (q|k|v and gate|up joined)."""

        def weight(*linears):
            return torch.cat([m.weight for m in linears]).t().contiguous()

        def bias(*linears):
            return None if linears[0].bias is None else torch.cat([m.bias for m in linears])

        a, m = layer.self_attn, layer.mlp
        return {
            "qkv": weight(a.q_proj, a.k_proj, a.v_proj),
            "qkv_bias": bias(a.q_proj, a.k_proj, a.v_proj),
            "o": weight(a.o_proj),
            "o_bias": bias(a.o_proj),
            "gate_up": weight(m.gate_proj, m.up_proj),
            "gate_up_bias": bias(m.gate_proj, m.up_proj),
            "down": weight(m.down_proj),
            "down_bias": bias(m.down_proj),
        }

    def embed(self, input_ids: torch.Tensor, cells: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, T] -> [B, T, D]; `cells` [B, T]: their grid positions (-1: not a code),
        needed by a model with grid embeddings (illume_mllm.grid_positions)."""
        x = self.embed_tokens(input_ids)
        if self.grid_embedding is None:
            return x
        if cells is None:
            raise ValueError("this model has grid embeddings: pass each token's grid position")
        return x + self.grid_embedding(cells).to(x.dtype)

    @staticmethod
    def _project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        y = x @ weight
        return y if bias is None else y + bias

    def _rms(self, x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        variance = x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon
        x = x * torch.rsqrt(variance) if self.norm_form == "rsqrt" else x / torch.sqrt(variance)
        return norm.weight * x.to(dtype)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def _projections(self, i: int, x: torch.Tensor):
        """x [B, T, D] -> q [B, T, H * hd], k, v [B, T, Hkv * hd] (no rotary)."""
        s, attn = self.shape, self.layers[i].self_attn
        h = self._rms(x, self.layers[i].input_layernorm)
        if self.fused:
            p = self.packed[i]
            return self._project(h, p["qkv"], p["qkv_bias"]).split(
                [s.heads * s.head_dim, s.kv_heads * s.head_dim, s.kv_heads * s.head_dim], dim=-1
            )
        q = F.linear(h, attn.q_proj.weight, attn.q_proj.bias)
        k = F.linear(h, attn.k_proj.weight, attn.k_proj.bias)
        v = F.linear(h, attn.v_proj.weight, attn.v_proj.bias)
        return q, k, v

    def _qkv(self, i: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x [B, T, D] -> q [B, H, T, hd], k, v [B, Hkv, T, hd] (rotary applied)."""
        s = self.shape
        b, t, _ = x.shape
        q, k, v = self._projections(i, x)
        q = q.view(b, t, s.heads, s.head_dim)
        k = k.view(b, t, s.kv_heads, s.head_dim)
        v = v.view(b, t, s.kv_heads, s.head_dim)
        cos, sin = cos[:, :, None], sin[:, :, None]  # [B, T, 1, hd]
        q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def _attend(self, q, k, v, bias) -> torch.Tensor:
        """q [B, H, T, hd] over k, v [B, Hkv, S, hd] with bias [B, 1, T, S] -> [B, T, H * hd]."""
        if self.shape.kv_heads != self.shape.heads:
            repeat = self.shape.heads // self.shape.kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        b, _, t, _ = q.shape
        if t == 1 and q.device.type == "cpu":
            # One query per row (a decode step): two small products beat the fused kernel's setup.
            weights = torch.softmax((q @ k.transpose(-1, -2)) * self.scaling + bias, dim=-1)
            return (weights @ v).transpose(1, 2).reshape(b, t, -1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scaling)
        return out.transpose(1, 2).reshape(b, t, -1)

    def _finish(self, i: int, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        layer = self.layers[i]
        attn, mlp = layer.self_attn, layer.mlp
        if self.fused:
            p = self.packed[i]
            x = x + self._project(attended, p["o"], p["o_bias"])
            gate, up = self._project(
                self._rms(x, layer.post_attention_layernorm), p["gate_up"], p["gate_up_bias"]
            ).chunk(2, dim=-1)
            return x + self._project(mlp.act_fn(gate) * up, p["down"], p["down_bias"])
        x = x + F.linear(attended, attn.o_proj.weight, attn.o_proj.bias)
        h = self._rms(x, layer.post_attention_layernorm)
        gate, up, down = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        gated = mlp.act_fn(F.linear(h, gate.weight, gate.bias)) * F.linear(h, up.weight, up.bias)
        return x + F.linear(gated, down.weight, down.bias)

    def logits(self, hidden: torch.Tensor, rows: slice | None = None) -> torch.Tensor:
        """Final norm + LM head: [B, D] -> [B, V], or only the vocabulary `rows` (e.g. vision ids)."""
        h = self._rms(hidden, self.norm)
        weight = self.lm_head.weight if rows is None else self.lm_head.weight[rows]
        bias = self.lm_head.bias
        return F.linear(h, weight, None if bias is None else bias if rows is None else bias[rows])

    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, T] -> cos, sin [B, T, hd]."""
        return self.cos[positions], self.sin[positions]

    # -- the two forms ----------------------------------------------------------------------------

    def forward_static(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        bias: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slots: torch.Tensor,
        every_position: bool = False,
    ) -> torch.Tensor:
        """x [B, T, D] at rotary `positions` [B, T], written to cache `slots` [T] of
        k_cache / v_cache [L, B, Hkv, S, hd]; bias [B, 1, T, S] -> last hidden state [B, D]
        (`every_position`: all of them, [B, T, D], as speculative decoding verifies a window)."""
        cos, sin = self.rotary(positions)
        for i in range(self.shape.layers):
            q, k, v = self._qkv(i, x, cos, sin)
            k_cache[i].index_copy_(2, slots, k)
            v_cache[i].index_copy_(2, slots, v)
            x = self._finish(i, x, self._attend(q, k_cache[i], v_cache[i], bias))
        return x if every_position else x[:, -1]

    def forward_past(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        attention_mask: torch.Tensor,
        past: list[tuple[torch.Tensor, torch.Tensor]],
        every_position: bool = False,
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """x [B, T, D] after `past` keys/values [B, Hkv, P, hd] per layer; attention_mask [B, P + T]
        (1 = attend, left padding 0) -> last hidden state [B, D] (`every_position`: all, [B, T, D])
        and the presents [B, Hkv, P + T, hd]."""
        total = attention_mask.shape[1]
        slots = torch.arange(total - x.shape[1], total, device=x.device)
        bias = padding_causal_bias(attention_mask, slots, x.dtype)
        presents = []
        if self.attention_form == "contrib":
            s, half = self.shape, self.shape.head_dim // 2
            # [P, hd / 2]: the tables repeat their first half (rotate-half rotary)
            cos, sin = self.cos[:, :half], self.sin[:, :half]
            for i in range(s.layers):
                q, k, v = self._projections(i, x)
                q = rotary_embedding(q, positions, cos, sin, s.heads)
                k = rotary_embedding(k, positions, cos, sin, s.kv_heads)
                attended, key, value = attention_after_past(
                    q, k, v, bias, past[i][0], past[i][1], s.heads, self.scaling
                )
                presents.append((key, value))
                x = self._finish(i, x, attended)
            return (x if every_position else x[:, -1]), presents
        cos, sin = self.rotary(positions)
        for i in range(self.shape.layers):
            q, k, v = self._qkv(i, x, cos, sin)
            k, v = torch.cat([past[i][0], k], dim=2), torch.cat([past[i][1], v], dim=2)
            presents.append((k, v))
            x = self._finish(i, x, self._attend(q, k, v, bias))
        return (x if every_position else x[:, -1]), presents


def padding_causal_bias(
    key_mask: torch.Tensor, query_slots: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """key_mask [B, S] (1 = a real token) and the slots [T] of the queries -> additive [B, 1, T, S]:
    a query sees the real keys at or before its own slot.

    Masked entries get the dtype's minimum, not -inf: a left-padding query row with nothing to
    attend to then stays finite (a NaN there would reach real rows through the values)."""
    attention_mask = key_mask
    causal = (
        torch.arange(key_mask.shape[1], device=key_mask.device)[None, :] <= query_slots[:, None]
    )
    allowed = causal[None] & attention_mask[:, None, :].bool()  # [B, T, S]
    zero = torch.zeros((), dtype=dtype, device=attention_mask.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)[:, None]


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Rotary positions [B, S] of left-padded rows: 0 at each row's first real token."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def vision_features(model, pixel_values: torch.Tensor) -> torch.Tensor:
    """pixel_values [I, 3, H, W] -> adapter features [I, N, D] (the tower's configured layer, or
    its layers concatenated per patch, as LLaVA does)."""
    config = model.config
    out = model.vision_tower(pixel_values, output_hidden_states=True)
    layers = config.vision_feature_layer
    layers = [layers] if isinstance(layers, int) else layers
    features = torch.cat([out.hidden_states[i] for i in layers], dim=-1)  # [I, N(+1), Dv * L]
    if config.vision_feature_select_strategy == "default":
        features = features[:, 1:]  # drop a class token
    return model.adapter(features)
