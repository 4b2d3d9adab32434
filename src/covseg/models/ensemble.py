"""An ensemble of trained networks that behaves as one network: the mean of their probabilities.

nnU-Net averages the softmax of its five fold models; covseg does the same with the sigmoid of
each head, so that an ensemble goes through every code path a single network does (``segment``,
``evaluate``, lung framing, flip TTA, batch-norm folding, ONNX export) unchanged. The members may
differ in architecture (e.g. a ``fast4`` and a ``fast`` network); they share the input size and
the intensity rule, which the checkpoint records once (:func:`covseg.training.ensemble.ensemble`
checks it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from covseg.config import ModelConfig
from covseg.models.bifurcated import SegOutput

__all__ = ["Ensemble"]

#: Probabilities are clamped to ``[EPS, 1 - EPS]`` before the logit (float32-safe, and far below
#: any threshold a post-processing search picks).
EPS = 1e-6


class Ensemble(nn.Module):
    """Mean of the members' head probabilities, returned as logits (:class:`SegOutput`).

    Args:
        members: trained networks returning :class:`SegOutput`; all must predict the same heads
            (a single-task U-Net has no lung head, so it cannot join bifurcated networks).

    Attributes:
        members: the networks (state-dict keys ``members.{i}.*``).
        cfg: the first member's config (what code that asks a network for its config, e.g. for
            its kind, reads).

    Raises:
        ValueError: fewer than two members, or members of different kinds.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two networks, got {len(members)}")
        kinds = {getattr(getattr(m, "cfg", None), "model", None) for m in members}
        if len(kinds) != 1:
            raise ValueError(f"ensemble members must be of one kind, got {sorted(map(str, kinds))}")
        self.members = nn.ModuleList(members)

    @property
    def cfg(self) -> ModelConfig:
        return self.members[0].cfg  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> SegOutput:
        outs = [m(x) for m in self.members]

        def mean_logit(head: str) -> torch.Tensor | None:
            logits = [getattr(o, head) for o in outs]
            if logits[0] is None:
                return None
            p = torch.stack([torch.sigmoid(z) for z in logits]).mean(0)
            p = p.clamp(EPS, 1 - EPS)
            return torch.log(p) - torch.log1p(-p)

        infection = mean_logit("infection")
        assert infection is not None
        return SegOutput(mean_logit("lung"), mean_logit("infection_aux"), infection)
