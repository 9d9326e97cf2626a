"""Training losses: the discrete-time survival negative log-likelihood of MCAT/MambaMIL."""

from __future__ import annotations

import torch


def nll_survival_loss(
    hazards: torch.Tensor,
    survival: torch.Tensor,
    y: torch.Tensor,
    event: torch.Tensor,
    alpha: float = 0.0,
    eps: float = 1e-7,
) -> torch.Tensor:
    """The discrete-time negative log-likelihood of MCAT/MambaMIL (``NLLSurvLoss``).

    ``y`` is the time bin, ``event`` 1 when observed; censorship c = 1 − event. ``alpha`` weights the
    uncensored term: loss = (1 − alpha)·(censored + uncensored) + alpha·uncensored.
    """
    y = y.view(-1, 1).long()
    c = (1 - event.view(-1, 1)).float()
    s_padded = torch.cat([torch.ones_like(c), survival], dim=1)
    uncensored = -(1 - c) * (
        torch.log(torch.gather(s_padded, 1, y).clamp(min=eps)) + torch.log(torch.gather(hazards, 1, y).clamp(min=eps))
    )
    censored = -c * torch.log(torch.gather(s_padded, 1, y + 1).clamp(min=eps))
    loss = (1 - alpha) * (censored + uncensored) + alpha * uncensored
    return loss.mean()
