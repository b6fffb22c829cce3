"""Token-level losses: pure functions on selected target positions, named by direction."""

from kdlight.losses.divergences import Divergence, ForwardKL, ReverseKL, forward_kl, reverse_kl
from kdlight.losses.reduction import masked_token_sum, select_positions, token_cross_entropy

__all__ = ["Divergence", "ForwardKL", "ReverseKL", "forward_kl", "reverse_kl", "masked_token_sum",
           "select_positions", "token_cross_entropy"]
