"""Vector quantizer (ILLUME Eq. 1: v_i = argmin_j ||x_i - c_j||) with what makes VQ work in practice.

- Low-dimensional codes: features are projected to `code_dim` before lookup (and back after),
  which raises codebook usage (ViT-VQGAN, "factorized codes").
- l2-normalised codes: lookup by cosine on the unit sphere, so no code drifts out of reach.
- Updates: `ema` (codebook = exponential moving average of the vectors assigned to each code;
  only the commitment loss reaches the encoder side) or `straight_through` (codebook loss
  ||sg(z) - c||^2 + beta * ||z - sg(c)||^2, gradients copied through the lookup).
- Dead-code restarts: codes whose EMA usage falls below `dead_threshold` are re-seeded from
  inputs of the current batch, every step of training: uniformly at random (`restart="random"`),
  or with probability proportional to each input's squared distance from its code
  (`restart="error"`, k-means++'s seeding). On data where a few points hold most of the mass (the
  background patches of a patch-local tokenizer), random seeds land on those points and die again;
  error-weighted seeds go where the codebook serves its inputs worst.
- Usage and perplexity of the assignments are tracked for logging.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class QuantizerOutput:
    """quantized: [B, N, code_dim] chosen codes (straight-through); codes: [B, N] int64;
    loss: scalar commitment (+ codebook) loss; perplexity: exp entropy of this batch's assignments;
    usage: fraction of codes with EMA usage above the dead threshold."""

    quantized: torch.Tensor
    codes: torch.Tensor
    loss: torch.Tensor
    perplexity: torch.Tensor
    usage: torch.Tensor


class VectorQuantizer(nn.Module):
    def __init__(
        self,
        codebook_size: int,
        code_dim: int,
        update: str = "ema",
        l2_normalize: bool = True,
        commitment: float = 0.25,
        decay: float = 0.99,
        dead_threshold: float = 1e-3,
        init: str = "normal",
        restart: str = "random",
    ):
        super().__init__()
        if update not in ("ema", "straight_through"):
            raise ValueError(f"update must be 'ema' or 'straight_through', got {update!r}")
        if restart not in ("random", "error"):
            raise ValueError(f"restart must be 'random' or 'error', got {restart!r}")
        self.restart = restart
        self.codebook_size, self.code_dim = codebook_size, code_dim
        self.update, self.l2_normalize = update, l2_normalize
        self.commitment, self.decay, self.dead_threshold = commitment, decay, dead_threshold
        weight = torch.randn(codebook_size, code_dim)
        if (
            init == "collapsed"
        ):  # every code at one far-away point: one code wins every input (tests the restarts)
            weight = 20 * F.normalize(weight[:1], dim=-1).repeat(codebook_size, 1) + 1e-4 * weight
        elif init != "normal":
            raise ValueError(f"init must be 'normal' or 'collapsed', got {init!r}")
        if update == "ema":
            self.register_buffer("codebook", weight)
            self.register_buffer("ema_sum", weight.clone())
            self.register_buffer("ema_count", torch.ones(codebook_size))
        else:
            self.codebook = nn.Parameter(weight)
        # Usage of each code, an EMA of assignment frequency (x codebook_size: 1.0 = uniform share).
        self.register_buffer("usage_ema", torch.ones(codebook_size))
        self.restart_dead_codes = True

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.l2_normalize else x

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [...] -> [..., code_dim] code vectors."""
        if codes.dtype != torch.long:
            raise TypeError(f"codes must be int64, got {codes.dtype}")
        checkable = not (torch.compiler.is_exporting() or torch.compiler.is_compiling())
        if (
            checkable
            and codes.numel()
            and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size)
        ):
            raise ValueError(
                f"codes must lie in [0, {self.codebook_size}), got [{int(codes.min())}, {int(codes.max())}]"
            )
        return F.embedding(codes, self._normalise(self.codebook))

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """[B, N, code_dim] -> [B, N] nearest codes by L2 (cosine when normalised)."""
        # In float32 even under a bf16 autocast (mixed-precision training): bf16 distances pick
        # another code for near ties (0.4% of the shapes tokenizer's codes, measured).
        with torch.autocast(z.device.type, enabled=False):
            flat = self._normalise(z.float()).reshape(-1, self.code_dim)
            book = self._normalise(self.codebook.float())
            distances = (
                flat.pow(2).sum(1, keepdim=True) - 2 * flat @ book.t() + book.pow(2).sum(1)[None]
            )
        return distances.argmin(dim=1).reshape(z.shape[:-1])

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        z = self._normalise(z)
        codes = self.lookup(z)
        chosen = self.embed(codes)
        one_hot = F.one_hot(codes.reshape(-1), self.codebook_size).type_as(z)
        share = one_hot.mean(0)
        perplexity = torch.exp(-(share * torch.log(share + 1e-10)).sum())
        if self.update == "ema":
            loss = self.commitment * F.mse_loss(z, chosen.detach())
        else:
            loss = F.mse_loss(chosen, z.detach()) + self.commitment * F.mse_loss(z, chosen.detach())
        if self.training:
            self._update_statistics(
                z.detach().reshape(-1, self.code_dim),
                one_hot.detach(),
                chosen.detach().reshape(-1, self.code_dim),
            )
        quantized = z + (chosen - z).detach()
        usage = (self.usage_ema > self.dead_threshold).float().mean()
        return QuantizerOutput(quantized, codes, loss, perplexity, usage)

    @torch.no_grad()
    def _update_statistics(
        self, flat: torch.Tensor, one_hot: torch.Tensor, chosen: torch.Tensor
    ) -> None:
        counts = one_hot.sum(0)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)
        self.usage_ema.mul_(self.decay).add_(
            counts * self.codebook_size / max(float(counts.sum()), 1.0), alpha=1 - self.decay
        )
        if self.update == "ema":
            sums = one_hot.t() @ flat.float()
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(sums)
            self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
            self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            n = self.ema_count.sum()
            smoothed = (
                (self.ema_count + 1e-5) / (n + self.codebook_size * 1e-5) * n
            )  # Laplace smoothing
            self.codebook.copy_(self.ema_sum / smoothed[:, None])
        if self.restart_dead_codes:
            self._restart(flat, chosen)

    @torch.no_grad()
    def _restart(self, flat: torch.Tensor, chosen: torch.Tensor) -> None:
        dead = self.usage_ema < self.dead_threshold
        n_dead = int(dead.sum())
        if n_dead == 0:
            return
        # Re-seed each dead code at an input of this batch (with a little noise so that several
        # restarts from one input spread out). Under DDP every rank takes rank 0's seeds (usage
        # is all-reduced, so all ranks agree on which codes are dead).
        if self.restart == "error":
            error = (flat.float() - chosen.float()).pow(2).sum(1)
            picks = torch.multinomial(error + 1e-12, n_dead, replacement=True)
        else:
            picks = torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)
        seeds = flat[picks] + 0.01 * flat.std() * torch.randn_like(flat[picks])
        seeds = self._normalise(seeds).to(self.codebook.dtype)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(seeds, 0)
        self.codebook.data[dead] = seeds
        self.usage_ema[dead] = 1.0  # a grace period before it can be declared dead again
        if self.update == "ema":
            self.ema_sum[dead] = seeds
            self.ema_count[dead] = 1.0
