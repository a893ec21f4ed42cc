"""`use_ema`: an exponential moving average of the adapter's trainable tensors.

The decay follows SimpleTuner's EMA model: with `ema_warmup_steps` the average copies the weights
until that step and then decays at `ema_decay`; without it the decay grows as (1 + n) / (10 + n)
up to `ema_decay`, n counting updates after the first (which copies). Updates happen every
`ema_update_interval` optimizer steps. At the end of training the adapter takes the averaged
weights, so the saved, validated and registered adapter is the EMA one.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

EMA_FILE = "ema"  # checkpoint tensors: ema.safetensors


def ema_decay_at(step: int, decay: float, warmup_steps: int = 0) -> float:
    """The decay for the update after optimizer step `step` (1-based); 0 copies the weights."""
    if warmup_steps > 0:
        return 0.0 if step < warmup_steps else decay
    n = max(0, step - 1)
    if n <= 0:
        return 0.0
    return min((1 + n) / (10 + n), decay)


class AdapterEMA:
    def __init__(
        self, parameters: Iterable[torch.nn.Parameter], decay: float, update_interval: int = 1, warmup_steps: int = 0
    ) -> None:
        self.parameters = [p for p in parameters if p.requires_grad]
        self.decay = decay
        self.update_interval = update_interval
        self.warmup_steps = warmup_steps
        # float32 shadows: a bf16 average would round small updates away.
        self.shadow = [p.detach().clone().float() for p in self.parameters]

    @torch.no_grad()
    def update(self, step: int) -> None:
        if step % self.update_interval:
            return
        decay = ema_decay_at(step, self.decay, self.warmup_steps)
        for shadow, param in zip(self.shadow, self.parameters, strict=True):
            shadow.mul_(decay).add_(param.detach().float(), alpha=1 - decay)

    @torch.no_grad()
    def copy_to_adapter(self) -> None:
        for shadow, param in zip(self.shadow, self.parameters, strict=True):
            param.copy_(shadow.to(param.dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {str(i): t.contiguous() for i, t in enumerate(self.shadow)}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        if len(tensors) != len(self.shadow):
            raise ValueError(f"EMA state holds {len(tensors)} tensors; the adapter has {len(self.shadow)}")
        self.shadow = [tensors[str(i)].float() for i in range(len(self.shadow))]
