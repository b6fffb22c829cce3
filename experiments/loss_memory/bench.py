"""Memory and time of kdlight's chunked divergence vs a naive full-vocabulary implementation.

    .venv/bin/python experiments/loss_memory/bench.py                 # the issue's grid, CPU
    .venv/bin/python experiments/loss_memory/bench.py --device cuda   # on a GPU

For each vocabulary size x number of positions, both implementations compute forward KL on the
same student and teacher logits (the inputs; bf16 by default, as models emit them) and backpropagate
to the student logits. Each measurement runs in a fresh subprocess: peak memory beyond the inputs
(CPU: the process's peak RSS, reset with /proc/self/clear_refs after the inputs exist; GPU:
torch.cuda.max_memory_allocated), and the median wall time of forward + backward. Both columns
include the gradient of the student logits, which any implementation must produce.

naive   = fp32 log-softmax of both [N, V] inputs, then the divergence (what most peers do)
kdlight = kdlight.losses.ForwardKL (chunked; default chunk of 2^24 logits)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

GRID = [(32_000, 1_000), (32_000, 4_000), (128_000, 1_000), (128_000, 4_000)]


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


def worker(impl: str, vocab: int, positions: int, dtype: str, device: str, repeats: int) -> dict:
    import torch

    from kdlight.losses import ForwardKL

    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    student = torch.randn(positions, vocab, dtype=dt, device=device).requires_grad_()
    teacher = torch.randn(positions, vocab, dtype=dt, device=device)
    loss_fn = naive_forward_kl if impl == "naive" else ForwardKL()

    def step() -> float:
        student.grad = None
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        loss_fn(student, teacher).sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    step()  # warm-up (allocator, kernels)
    student.grad = None
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
               "--dtype", args.dtype, "--device", args.device, "--repeats", str(args.repeats)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{impl} V={vocab} N={positions} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", choices=["naive", "kdlight"], help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--positions", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.vocab, args.positions, args.dtype, args.device, args.repeats)))
        return
    print(f"forward KL, forward + backward, {args.dtype} inputs on {args.device}; memory beyond the inputs\n")
    print("| vocab | positions | naive MiB | kdlight MiB | memory ratio | naive s | kdlight s | time ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for vocab, positions in GRID:
        naive = measure("naive", vocab, positions, args)
        ours = measure("kdlight", vocab, positions, args)
        mib = 2**20
        print(f"| {vocab:,} | {positions:,} | {naive['extra_bytes'] / mib:,.0f} | {ours['extra_bytes'] / mib:,.0f} "
              f"| {ours['extra_bytes'] / naive['extra_bytes']:.2f} | {naive['time_s']:.2f} | {ours['time_s']:.2f} "
              f"| {ours['time_s'] / naive['time_s']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
