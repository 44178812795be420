"""How the expected sparsity is driven to its target: CoFi's Lagrangian, or an exact projection.

- ``lagrangian`` (CoFi, Xia et al. 2022): the loss gets lambda_1 (s - t) + lambda_2 (s - t)^2 and the
  lambdas are trained by gradient ascent. It needs many steps: the gates respond slowly and the
  integrating multiplier winds up meanwhile, so on short budgets s lags the target, then overshoots.
- ``projection``: no multiplier. After every optimiser step one scalar offset, shared by all gates
  and added to every ``log_alpha``, is found by bisection so that the expected sparsity equals the
  current target exactly (s decreases monotonically as the offset grows). The learned ``log_alpha``
  only decide the ORDER in which structures go (task loss and initial importance); the budget is
  met at every step, so there is nothing to wind up and nothing to overshoot.
"""

from __future__ import annotations

import torch

from .gates import L0Pruner

OFFSET_RANGE = 40.0  # |offset| in log-odds: sigmoid(40) is 1 - 4e-18, so every target in [0, 1) is inside
BISECTION_STEPS = 60  # 80 / 2^60: the offset is exact to float precision


@torch.no_grad()
def project_(pruner: L0Pruner, target: float) -> float:
    """Set ``pruner``'s shared gate offset so that its expected sparsity equals ``target``; returns the offset.

    ``log_alpha`` is clamped into CoFi's range first, as the next training forward would do anyway.
    """
    pruner.constrain_()
    low, high = -OFFSET_RANGE, OFFSET_RANGE
    for _ in range(BISECTION_STEPS):
        mid = (low + high) / 2
        pruner.set_offset_(mid)
        if float(pruner.expected_sparsity()) > target:
            low = mid  # too sparse: shift the gates up (more kept)
        else:
            high = mid
    offset = (low + high) / 2
    pruner.set_offset_(offset)
    return offset
