"""Token-level losses: pure functions on selected target positions, named by direction.

`divergences` holds the maths (pure functions), `chunked` the one memory-bounding wrapper,
`objectives` the configurable strategies methods use, `sparse` top-k teacher targets.
"""

from kdlight.losses.chunked import chunked_divergence
from kdlight.losses.divergences import (forward_kl, generalized_jsd, jensen_shannon, reverse_kl, skew_forward_kl,
                                        skew_reverse_kl, total_variation)
from kdlight.losses.objectives import (Divergence, ForwardKL, GeneralizedJSD, JensenShannon, ReverseKL,
                                       SkewForwardKL, SkewReverseKL, TotalVariation)
from kdlight.losses.reduction import token_cross_entropy

__all__ = ["Divergence", "ForwardKL", "GeneralizedJSD", "JensenShannon", "ReverseKL", "SkewForwardKL",
           "SkewReverseKL", "TotalVariation", "chunked_divergence", "forward_kl", "generalized_jsd",
           "jensen_shannon", "reverse_kl", "skew_forward_kl", "skew_reverse_kl", "token_cross_entropy",
           "total_variation"]
