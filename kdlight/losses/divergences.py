"""Divergences between teacher p and student q at each target position (docs/methods.md, "Divergences").

Every divergence maps student and teacher logits for N selected positions, `[N, V]` each, to one
value per position, `[N]` (fp32). Conventions shared by all of them:

- Computation is in fp32 whatever the input dtype (a bf16 teacher against an fp32 student gave
  negative divergences in a peer).
- `-inf` logits (masked or padded vocabulary) are allowed: 0·log 0 = 0.
- Mixtures are built in probability space, `log(m/q) = log(a·e^{log p - log q} + b)` (a softplus);
  mixing log-probabilities directly is a known peer bug.
- Temperature τ softens both distributions, and the result is multiplied by τ² (Hinton et al.,
  2015) so gradient magnitudes stay comparable across τ.
- The teacher is a constant: no gradient flows to `teacher_logits`.

Speed. Each divergence is written once, as `<name>_and_grad`: its value *and* its gradient with
respect to the student logits in closed form, so no autograd graph is built through the softmaxes
and the mixture (whose `stack` + `logsumexp` backward was the slowest part of a step). With
g = ∂D/∂q, the chain rule through q = softmax(s/τ) gives ∂(τ²D)/∂s = τ·q ⊙ (g - Σ_v q_v g_v)
(`_through_softmax`; `_expectation_and_grad` where the value is Σ_v q_v g_v itself, from the same
product); each function only derives its g.

Underflow. fp32 `exp` of a number below ~-87 underflows into subnormals, which CPUs compute an
order of magnitude slower, and peaked (trained-like) logits put most of the vocabulary there. So a
log-probability is clamped at `EXP_FLOOR` (-80) where it is exponentiated (`probs`): a probability
of e^-80 = 2e-35 instead of a smaller one changes no fp32 sum. Log-probabilities themselves stay
exact down to `LOG_ZERO` (-1e4), which also stands in for log 0 (-inf logits): a 0·log 0 term
becomes at most e^-80·1e4 ≈ 2e-31, while a student ruling out a token the teacher keeps still
costs p·1e4 in FKL instead of NaN or inf.

The public functions (`forward_kl`, ...) return the values with a working backward (through
`kdlight.losses.chunked.chunked_divergence`, which also bounds memory); `Divergence` strategies
(`kdlight.losses.objectives`) call the `_and_grad` forms chunk by chunk.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch

from kdlight.losses.chunked import chunked_divergence

EXP_FLOOR = -80.0  # exp(x) for x >= -87.3 is a normal fp32 number; -80 leaves room for mixture weights
LOG_ZERO = -1e4  # log 0 (and anything below): finite, so 0·log 0 terms vanish instead of giving NaN

ValueAndGrad = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]  # (student [n, V], teacher ..., need_grad)


def log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """fp32 log-softmax of logits / τ, at least `LOG_ZERO` (-inf becomes finite): [N, V] -> [N, V]."""
    logits = logits.float()
    if temperature != 1.0:  # skip a full pass over [N, V] in the common case
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1).clamp_min_(LOG_ZERO)


def probs(log_x: torch.Tensor) -> torch.Tensor:
    """exp(log x), with log x clamped at `EXP_FLOOR` first so that no result is subnormal."""
    return log_x.clamp_min(EXP_FLOOR).exp_()


def log_mixture_ratios(log_p: torch.Tensor, log_q: torch.Tensor, weight_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """log(p/m) and log(q/m) for the mixture m = w·p + (1-w)·q, from log-probabilities: [N, V] x2 -> [N, V] x2.

    Built from d = log p - log q and the heavier side of the mixture, e.g. for w ≤ ½
    log(m/q) = log((1-w) + w·e^d) = log(1-w) + softplus(d + log w - log(1-w)): near the end points
    (w -> 0 or 1, where m is almost one of the two) the small log-ratio comes out directly instead
    of as the difference of two large ones.
    """
    d = log_p - log_q
    if weight_p <= 0.0 or weight_p >= 1.0:
        zero = torch.zeros_like(d)
        return (d, zero) if weight_p <= 0.0 else (zero, d.neg_())
    log_w, log_rest = math.log(weight_p), math.log1p(-weight_p)
    if weight_p <= 0.5:  # m is mostly q
        q_over_m = _softplus_(d + (log_w - log_rest)).add_(log_rest).neg_()  # -log(m/q)
        return d.add_(q_over_m), q_over_m
    p_over_m = _softplus_(torch.sub(log_rest - log_w, d)).add_(log_w).neg_()  # -log(m/p)
    return p_over_m, p_over_m - d


def _softplus_(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|), into a new tensor; overwrites `x`. |x| is capped
    at 80 so that `exp` never returns a subnormal (its slow path; the cap changes the result by
    < 2e-35). Not `torch.nn.functional.softplus`: it computes a tensor's last few elements with
    another formula than the rest, so its bits, and the divergence's, would depend on where a
    chunk of positions ends."""
    return x.abs().clamp_max_(-EXP_FLOOR).neg_().exp_().log1p_().add_(x.clamp_min_(0.0))


def _through_softmax(q: torch.Tensor, g: torch.Tensor, temperature: float) -> torch.Tensor:
    """∂(τ²·D)/∂s from g = ∂D/∂q, q = softmax(s/τ): τ·q ⊙ (g - Σ q g). Overwrites `g`."""
    g.sub_((q * g).sum(-1, keepdim=True)).mul_(q)
    return g.mul_(temperature) if temperature != 1.0 else g


def _expectation_and_grad(q: torch.Tensor, g: torch.Tensor, temperature: float, scale: float = 1.0,
                          need_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """E_q[g] = Σ_v q_v g_v per row and, for ∂D/∂q = scale·g, the gradient `_through_softmax` gives,
    from the same product: scale·τ·(q ⊙ g - E_q[g]·q). For divergences whose value is that
    expectation (reverse KL, GJSD's student side): 3-4 passes over [N, V] instead of 7. Overwrites `g`."""
    qg = g.mul_(q)
    expectation = qg.sum(-1)
    if not need_grad:
        return expectation, None
    grad = qg.addcmul_(q, expectation.unsqueeze(-1), value=-1.0)
    factor = scale * temperature
    return expectation, grad.mul_(factor) if factor != 1.0 else grad


def _scaled(value: torch.Tensor, temperature: float) -> torch.Tensor:
    return value * temperature**2 if temperature != 1.0 else value


def forward_kl_and_grad(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                        need_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """FKL = KL(p‖q) = Σ_v p_v log(p_v / q_v): mean-seeking; the student covers every teacher mode.

    Gradient: τ(q - p). Args: student_logits [N, V] (q = softmax(s/τ)), teacher_logits [N, V]
    (p = softmax(t/τ)), temperature τ. Returns [N] fp32 ≥ 0, and [N, V] fp32 (None unless need_grad).
    """
    log_p, log_q = log_probs(teacher_logits, temperature), log_probs(student_logits, temperature)
    p = probs(log_p)
    value = (p * log_p.sub_(log_q)).sum(-1)
    if not need_grad:
        return _scaled(value, temperature), None
    grad = log_q.clamp_min_(EXP_FLOOR).exp_().sub_(p)  # q - p, in log_q's buffer
    return _scaled(value, temperature), grad.mul_(temperature) if temperature != 1.0 else grad


def reverse_kl_and_grad(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                        need_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RKL = KL(q‖p) = Σ_v q_v log(q_v / p_v): mode-seeking; the student concentrates on teacher modes.

    Token-level RKL on given sequences (KID's RKD baseline), not MiniLLM's policy gradient. g = log(q/p).
    """
    log_q = log_probs(student_logits, temperature)
    log_ratio = log_q - log_probs(teacher_logits, temperature)
    q = log_q.clamp_min_(EXP_FLOOR).exp_()
    value, grad = _expectation_and_grad(q, log_ratio, temperature, need_grad=need_grad)
    return _scaled(value, temperature), grad


def generalized_jsd_and_grad(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float,
                             temperature: float = 1.0, need_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """GJSD(β) = β KL(p‖m) + (1-β) KL(q‖m), m = β p + (1-β) q (GKD, Agarwal et al. 2024, Eq. 1).

    Direction: as β -> 0 the loss behaves like β·FKL(p‖q), as β -> 1 like (1-β)·RKL(q‖p); at both
    ends the formula itself is 0. GKD and TRL *define* β = 0 as FKL and β = 1 as RKL, silently
    switching objective at the end points. kdlight refuses the end values instead: use `fkd`
    (ForwardKL) or `rkd` (ReverseKL) for those objectives. β = 0.5 is the symmetric JS divergence.
    Values lie in [0, H(β)] (H the binary entropy; log 2 at β = 0.5). g = (1-β) log(q/m).
    """
    check_gjsd_beta(beta)
    log_p, log_q = log_probs(teacher_logits, temperature), log_probs(student_logits, temperature)
    p_part, q_part = log_mixture_ratios(log_p, log_q, beta)  # log(p/m), log(q/m)
    value = beta * (probs(log_p) * p_part).sum(-1)
    q = log_q.clamp_min_(EXP_FLOOR).exp_()
    q_side, grad = _expectation_and_grad(q, q_part, temperature, 1 - beta, need_grad)
    return _scaled(value.add_(q_side, alpha=1 - beta), temperature), grad


def check_gjsd_beta(beta: float) -> None:
    """GJSD's β must lie strictly inside (0, 1): the error points to the method each end means."""
    if not 0.0 < beta < 1.0:
        end = "forward KL: use method fkd (divergence ForwardKL)" if beta <= 0 else \
            "reverse KL: use method rkd (divergence ReverseKL)"
        raise ValueError(f"generalized JSD needs 0 < beta < 1, got beta={beta}; at this end GKD means {end}")


def total_variation_and_grad(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                             need_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """TVD = ½ Σ_v |p_v - q_v|: symmetric, in [0, 1] (f-distill, Wen et al. 2023). g = ½ sign(q - p)."""
    q = probs(log_probs(student_logits, temperature))
    diff = q - probs(log_probs(teacher_logits, temperature))
    value = 0.5 * diff.abs().sum(-1)
    grad = _through_softmax(q, diff.sign_().mul_(0.5), temperature) if need_grad else None
    return _scaled(value, temperature), grad


def skew_forward_kl_and_grad(student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha: float = 0.1,
                             temperature: float = 1.0, need_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Skew FKL(α) = KL(p ‖ α p + (1-α) q) (DistiLLM, Ko et al. 2024; α = 0.1 there).

    α = 0 is FKL; α = 1 is 0; by convexity it never exceeds (1-α)·FKL, and it stays finite where
    q has no mass. g = -(1-α) p/m.
    """
    log_p, log_q = log_probs(teacher_logits, temperature), log_probs(student_logits, temperature)
    log_ratio, _ = log_mixture_ratios(log_p, log_q, alpha)  # log(p/m)
    value = (probs(log_p) * log_ratio).sum(-1)
    if not need_grad:
        return _scaled(value, temperature), None
    g = probs(log_ratio).mul_(alpha - 1)
    return _scaled(value, temperature), _through_softmax(probs(log_q), g, temperature)


def skew_reverse_kl_and_grad(student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha: float = 0.1,
                             temperature: float = 1.0, need_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Skew RKL(α) = KL(q ‖ α q + (1-α) p) (DistiLLM, Ko et al. 2024). α = 0 is RKL; α = 1 is 0.
    g = log(q/m) - α q/m (the constant 1 of ∂(q log q)/∂q cancels through the softmax)."""
    log_p, log_q = log_probs(teacher_logits, temperature), log_probs(student_logits, temperature)
    _, log_ratio = log_mixture_ratios(log_p, log_q, 1 - alpha)  # log(q/m), m = α q + (1-α) p
    q = probs(log_q)
    value = (q * log_ratio).sum(-1)
    if not need_grad:
        return _scaled(value, temperature), None
    g = probs(log_ratio).mul_(-alpha).add_(log_ratio)
    return _scaled(value, temperature), _through_softmax(q, g, temperature)


# --- the same divergences as plain functions of logits (values, with a backward) -----------------
def _values(fn: ValueAndGrad, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    return chunked_divergence(fn, student_logits, teacher_logits)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """FKL per position: [N, V] x2 -> [N] (see `forward_kl_and_grad`)."""
    return _values(partial(forward_kl_and_grad, temperature=temperature), student_logits, teacher_logits)


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """RKL per position: [N, V] x2 -> [N] (see `reverse_kl_and_grad`)."""
    return _values(partial(reverse_kl_and_grad, temperature=temperature), student_logits, teacher_logits)


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float,
                    temperature: float = 1.0) -> torch.Tensor:
    """GJSD(β) per position, 0 < β < 1: [N, V] x2 -> [N] (see `generalized_jsd_and_grad`)."""
    check_gjsd_beta(beta)
    return _values(partial(generalized_jsd_and_grad, beta=beta, temperature=temperature), student_logits, teacher_logits)


def jensen_shannon(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """JS = ½ KL(p‖m) + ½ KL(q‖m), m = ½(p + q): symmetric, in [0, log 2]. Shapes as in `forward_kl`."""
    return generalized_jsd(student_logits, teacher_logits, 0.5, temperature)


def total_variation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """TVD per position: [N, V] x2 -> [N] (see `total_variation_and_grad`)."""
    return _values(partial(total_variation_and_grad, temperature=temperature), student_logits, teacher_logits)


def skew_forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha: float = 0.1,
                    temperature: float = 1.0) -> torch.Tensor:
    """Skew FKL(α) per position: [N, V] x2 -> [N] (see `skew_forward_kl_and_grad`)."""
    return _values(partial(skew_forward_kl_and_grad, alpha=alpha, temperature=temperature), student_logits,
                   teacher_logits)


def skew_reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, alpha: float = 0.1,
                    temperature: float = 1.0) -> torch.Tensor:
    """Skew RKL(α) per position: [N, V] x2 -> [N] (see `skew_reverse_kl_and_grad`)."""
    return _values(partial(skew_reverse_kl_and_grad, alpha=alpha, temperature=temperature), student_logits,
                   teacher_logits)
