"""Memory and time of kdlight's chunked divergence, and of its fused output head, vs naive ones.

    .venv/bin/python experiments/loss_memory/bench.py                 # both grids, CPU
    .venv/bin/python experiments/loss_memory/bench.py --mode head     # the fused head only
    .venv/bin/python experiments/loss_memory/bench.py --device cuda   # on a GPU

For each vocabulary size x number of positions, both implementations compute forward KL on the
same student and teacher logits (the inputs; bf16 by default, as models emit them) and backpropagate
to the student logits. Each measurement runs in a fresh subprocess: peak memory beyond the inputs
(CPU: the process's peak RSS, reset with /proc/self/clear_refs after the inputs exist; GPU:
torch.cuda.max_memory_allocated), and the median wall time of forward + backward. Both columns
include the gradient of the student logits, which any implementation must produce.

naive   = fp32 log-softmax of both [N, V] inputs, then the divergence (what most peers do)
kdlight = kdlight.losses.ForwardKL (chunked; default chunk of 2^24 logits)

`--mode head` starts one step earlier, from the last hidden states [N, H] of student and teacher
and their output heads [V, H] (the student's trainable): naive forms both [N, V] logits and then
does the above; `fused` is kdlight.losses.fused.fused_head_loss, which projects chunk by chunk
inside the loss. Both columns include the gradients of the student's hidden states and head.
Naive cells above `--max-naive-positions` are not run (their memory would not fit this machine)
but extrapolated linearly in N from the two largest measured ones, and marked so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

GRID = [(32_000, 1_000), (32_000, 4_000), (128_000, 1_000), (128_000, 4_000)]
HEAD_GRID = [(128_000, 1_000), (128_000, 4_000), (128_000, 8_000)]


def naive_forward_kl(student, teacher):
    import torch.nn.functional as F

    log_q = F.log_softmax(student.float(), dim=-1)
    log_p = F.log_softmax(teacher.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(impl: str, vocab: int, positions: int, dtype: str, device: str, repeats: int, hidden: int) -> dict:
    import torch

    from kdlight.losses import ForwardKL
    from kdlight.losses.fused import HeadInputs, fused_head_loss
    from kdlight.models.lm import OutputHead

    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    if impl in ("naive", "kdlight"):
        student = torch.randn(positions, vocab, dtype=dt, device=device).requires_grad_()
        teacher = torch.randn(positions, vocab, dtype=dt, device=device)
        leaves = [student]
        loss_fn = naive_forward_kl if impl == "naive" else ForwardKL()

        def loss() -> torch.Tensor:
            return loss_fn(student, teacher).sum()
    else:  # from hidden states: [N, H] and heads [V, H]
        h_student = torch.randn(positions, hidden, dtype=dt, device=device).requires_grad_()
        w_student = (torch.randn(vocab, hidden, dtype=dt, device=device) / hidden**0.5).requires_grad_()
        h_teacher = torch.randn(positions, hidden, dtype=dt, device=device)
        w_teacher = torch.randn(vocab, hidden, dtype=dt, device=device) / hidden**0.5
        leaves = [h_student, w_student]

        def loss() -> torch.Tensor:
            if impl == "fused":
                return fused_head_loss(h_student, OutputHead(w_student), vocab, divergence=ForwardKL(), kd_scale=1.0,
                                       teacher=HeadInputs(h_teacher, OutputHead(w_teacher)))[0]
            with torch.no_grad():
                teacher_logits = h_teacher @ w_teacher.T
            return naive_forward_kl(h_student @ w_student.T, teacher_logits).sum()

    def step() -> float:
        for leaf in leaves:
            leaf.grad = None
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        loss().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    step()  # warm-up (allocator, kernels)
    for leaf in leaves:
        leaf.grad = None
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
        base = _rss_bytes("VmRSS:")
    times = [step() for _ in range(repeats)]
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _rss_bytes("VmHWM:")
    return {"extra_bytes": peak - base, "time_s": statistics.median(times)}


def measure(impl: str, vocab: int, positions: int, args) -> dict:
    command = [sys.executable, __file__, "--worker", impl, "--vocab", str(vocab), "--positions", str(positions),
               "--dtype", args.dtype, "--device", args.device, "--repeats", str(args.repeats),
               "--hidden", str(args.hidden)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{impl} V={vocab} N={positions} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--mode", choices=["divergence", "head", "both"], default="both")
    parser.add_argument("--hidden", type=int, default=256, help="hidden size H for --mode head")
    parser.add_argument("--max-naive-positions", type=int, default=4_000)
    parser.add_argument("--worker", choices=["naive", "kdlight", "naive_head", "fused"], help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--positions", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.vocab, args.positions, args.dtype, args.device, args.repeats,
                                args.hidden)))
        return
    if args.mode in ("divergence", "both"):
        print(f"forward KL from logits, forward + backward, {args.dtype} inputs on {args.device}; "
              "memory beyond the inputs\n")
        table(GRID, "naive", "kdlight", args)
    if args.mode in ("head", "both"):
        print(f"\nforward KL from hidden states (H = {args.hidden}) through the output heads, forward + backward, "
              f"{args.dtype} on {args.device}; memory beyond the inputs\n")
        table(HEAD_GRID, "naive_head", "fused", args)


def table(grid: list[tuple[int, int]], naive_impl: str, ours_impl: str, args) -> None:
    print(f"| vocab | positions | naive MiB | {ours_impl} MiB | memory ratio | naive s | {ours_impl} s | time ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    measured: dict[int, list[tuple[int, dict]]] = {}
    for vocab, positions in grid:
        mark = ""
        if positions <= args.max_naive_positions:
            naive = measure(naive_impl, vocab, positions, args)
            measured.setdefault(vocab, []).append((positions, naive))
        else:  # linear in N from the two largest measured cells of this vocabulary
            (n1, a), (n2, b) = measured[vocab][-2:]
            naive = {key: a[key] + (b[key] - a[key]) * (positions - n1) / (n2 - n1) for key in a}
            mark = " (extrapolated)"
        ours = measure(ours_impl, vocab, positions, args)
        mib = 2**20
        print(f"| {vocab:,} | {positions:,} | {naive['extra_bytes'] / mib:,.0f}{mark} | {ours['extra_bytes'] / mib:,.0f} "
              f"| {ours['extra_bytes'] / naive['extra_bytes']:.3f} | {naive['time_s']:.2f}{mark} | {ours['time_s']:.2f} "
              f"| {ours['time_s'] / naive['time_s']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
