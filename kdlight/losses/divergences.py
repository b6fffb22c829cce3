"""Divergences between teacher p and student q at each target position (docs/methods.md, "Divergences").

Every function maps student and teacher logits for N selected positions, `[N, V]` each, to one
value per position, `[N]` (fp32). Conventions shared by all of them:

- Computation is in fp32 whatever the input dtype (a bf16 teacher against an fp32 student gave
  negative divergences in a peer).
- `-inf` logits (masked or padded vocabulary) are allowed: 0·log 0 = 0.
- Mixtures are built in probability space, `log(a·p + b·q) = logsumexp(log a + log p, log b + log q)`;
  mixing log-probabilities directly is a known peer bug.
- Temperature τ softens both distributions, and the result is multiplied by τ² (Hinton et al.,
  2015) so gradient magnitudes stay comparable across τ.
- The teacher is a constant: no gradient flows to `teacher_logits`.

These functions materialise a few `[N, V]` fp32 tensors; callers bound memory by applying them
chunk by chunk through `kdlight.losses.chunked.chunked_divergence` (what `Divergence` does).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """fp32 log-softmax of logits / τ: [N, V] -> [N, V]."""
    logits = logits.float()
    if temperature != 1.0:  # skip a full pass over [N, V] in the common case
        logits = logits / temperature
    return F.log_softmax(logits, dim=-1)


def kl_from_log_probs(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) = Σ_v p_v (log p_v - log q_v) per row, with 0·log 0 = 0: [N, V] x2 -> [N].

    -inf log-probabilities are clamped to the most negative finite float, so where p = 0 the term
    is 0·(finite) = 0 instead of 0·inf = NaN. One clamp per input is much cheaper than masking with
    `torch.where` (measured 2-3x on the forward pass at V = 128k).
    """
    floor = torch.finfo(log_p.dtype).min
    return (log_p.exp() * (log_p.clamp_min(floor) - log_q.clamp_min(floor))).sum(-1)


def log_mixture(log_p: torch.Tensor, log_q: torch.Tensor, weight_p: float) -> torch.Tensor:
    """log(w·p + (1-w)·q), computed in probability space: [N, V] x2 -> [N, V]."""
    log_w = math.log(weight_p) if weight_p > 0 else -math.inf
    log_1w = math.log1p(-weight_p) if weight_p < 1 else -math.inf
    return torch.logsumexp(torch.stack([log_p + log_w, log_q + log_1w]), dim=0)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """FKL = KL(p‖q) = Σ_v p_v log(p_v / q_v): mean-seeking; the student covers every teacher mode.

    Args:
        student_logits: [N, V] (q = softmax(student_logits / τ)).
        teacher_logits: [N, V] (p = softmax(teacher_logits / τ)).
        temperature: τ.
    Returns:
        [N] fp32, ≥ 0.
    """
    kl = kl_from_log_probs(log_probs(teacher_logits, temperature), log_probs(student_logits, temperature))
    return kl * temperature**2


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """RKL = KL(q‖p) = Σ_v q_v log(q_v / p_v): mode-seeking; the student concentrates on teacher modes.

    Token-level RKL on given sequences (KID's RKD baseline), not MiniLLM's policy gradient.
    Shapes as in `forward_kl`.
    """
    kl = kl_from_log_probs(log_probs(student_logits, temperature), log_probs(teacher_logits, temperature))
    return kl * temperature**2


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float,
                    temperature: float = 1.0) -> torch.Tensor:
    """GJSD(β) = β KL(p‖m) + (1-β) KL(q‖m), m = β p + (1-β) q (GKD, Agarwal et al. 2024, Eq. 1).

    Direction: as β -> 0 the loss behaves like β·FKL(p‖q), as β -> 1 like (1-β)·RKL(q‖p); at both
    ends the formula itself is 0. GKD and TRL *define* β = 0 as FKL and β = 1 as RKL, silently
    switching objective at the end points. kdlight refuses the end values instead: use `fkd`
    (ForwardKL) or `rkd` (ReverseKL) for those objectives. β = 0.5 is the symmetric JS divergence.

    Args:
        student_logits: [N, V].
        teacher_logits: [N, V].
        beta: weight of the teacher in the mixture, strictly between 0 and 1.
        temperature: τ.
    Returns:
        [N] fp32, in [0, H(β)] where H is the binary entropy (log 2 at β = 0.5).
    """
    if not 0.0 < beta < 1.0:
        end = "forward KL: use method fkd (divergence ForwardKL)" if beta <= 0 else \
            "reverse KL: use method rkd (divergence ReverseKL)"
        raise ValueError(f"generalized JSD needs 0 < beta < 1, got beta={beta}; at this end GKD means {end}")
    log_p, log_q = log_probs(teacher_logits, temperature), log_probs(student_logits, temperature)
    log_m = log_mixture(log_p, log_q, beta)
    value = beta * kl_from_log_probs(log_p, log_m) + (1 - beta) * kl_from_log_probs(log_q, log_m)
    return value * temperature**2


def jensen_shannon(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """JS = ½ KL(p‖m) + ½ KL(q‖m), m = ½(p + q): symmetric, in [0, log 2]. Shapes as in `forward_kl`."""
    return generalized_jsd(student_logits, teacher_logits, 0.5, temperature)


def total_variation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """TVD = ½ Σ_v |p_v - q_v|: symmetric, in [0, 1] (f-distill, Wen et al. 2023). Shapes as in `forward_kl`."""
    p = log_probs(teacher_logits, temperature).exp()
    q = log_probs(student_logits, temperature).exp()
    return 0.5 * (p - q).abs().sum(-1) * temperature**2


def skew_forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha: float = 0.1,
                    temperature: float = 1.0) -> torch.Tensor:
    """Skew FKL(α) = KL(p ‖ α p + (1-α) q) (DistiLLM, Ko et al. 2024; α = 0.1 there).

    α = 0 is FKL; α = 1 is 0; by convexity it never exceeds (1-α)·FKL, and it stays finite where
    q has no mass. Shapes as in `forward_kl`.
    """
    log_p, log_q = log_probs(teacher_logits, temperature), log_probs(student_logits, temperature)
    return kl_from_log_probs(log_p, log_mixture(log_p, log_q, alpha)) * temperature**2


def skew_reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha: float = 0.1,
                    temperature: float = 1.0) -> torch.Tensor:
    """Skew RKL(α) = KL(q ‖ α q + (1-α) p) (DistiLLM, Ko et al. 2024). α = 0 is RKL; α = 1 is 0.
    Shapes as in `forward_kl`."""
    log_p, log_q = log_probs(teacher_logits, temperature), log_probs(student_logits, temperature)
    return kl_from_log_probs(log_q, log_mixture(log_q, log_p, alpha)) * temperature**2
