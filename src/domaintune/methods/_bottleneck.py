"""The bottleneck adapter layer (kept apart so that importing the recipe schema does not import torch)."""
from __future__ import annotations

import torch

CHILD_NAME = "bottleneck_adapter"


class BottleneckAdapter(torch.nn.Module):
    def __init__(self, hidden_size: int, bottleneck: int, activation: str, dropout: float):
        super().__init__()
        self.down = torch.nn.Linear(hidden_size, bottleneck)
        self.up = torch.nn.Linear(bottleneck, hidden_size)
        self.act = {"relu": torch.nn.ReLU, "gelu": torch.nn.GELU, "silu": torch.nn.SiLU}[activation]()
        self.dropout = torch.nn.Dropout(dropout)
        torch.nn.init.zeros_(self.up.weight)
        torch.nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        update = self.up(self.dropout(self.act(self.down(hidden.to(self.down.weight.dtype)))))
        return hidden + update.to(hidden.dtype)


def adapt_output(module, inputs, output):
    adapter = getattr(module, CHILD_NAME)
    if isinstance(output, tuple):  # attention returns (hidden states, attention weights)
        return (adapter(output[0]), *output[1:])
    return adapter(output)
