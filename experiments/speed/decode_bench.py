"""On-policy decoding speed: kdlight's static-cache decoder vs Hugging Face `generate`.

    .venv/bin/python experiments/speed/decode_bench.py                  # the issue's settings
    .venv/bin/python experiments/speed/decode_bench.py --threads 1 --blocks 3 --models llama-xs --no-compile

For each random-init model (conf/model/<name>.yaml, vocabulary 1024 from a byte-level BPE
tokenizer trained on synthetic text) and each strategy (greedy; sampling from the full
distribution, top_k 0, T 1, as `Decoding("sample")` gives it), the decoders continue the same
batch of prompts (batch 8, 64 prompt tokens, 64 new tokens by default):

- `hf`: `kdlight.models.decoding.hf_generate` (HF `generate`, every setting explicit);
- `fast`: `kdlight.models.decoding.generate`, which takes `kdlight.models.fast_decode`;
- `compiled`: the same with `Decoding(compile=True)` (its compilation happens in the warm-up);
- `floor`: no decoder, the matrix products any eager float32 decoder must do (`matmul_floor`).

Greedy outputs must be equal token for token (the run aborts if not); samples are drawn under the
same seed, but kdlight's sampler is not HF's (inverse transform sampling instead of
`torch.multinomial`), so the table's "outputs equal" is "no" for them (the tests check that the
draws follow the model's distribution). Timing: one warm-up call of
each, then `--blocks` blocks, each timing one call of each in alternating order; tokens/s =
generated tokens (cut after EOS) / wall time of the call, prompt forward included. Reported:
medians with min-max, and ratios of the medians to HF's. The process is set up as kdlight's
commands set up theirs (`kdlight.processes.prepare_compute`). Writes decode_bench.json (settings and
raw times) to experiments/speed/results/ or to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from kdlight.data.batch import collate
from kdlight.data.tokenizer import train_tokenizer
from kdlight.models import Decoding, ModelSpec, build_model, count_parameters
from kdlight.models.decoding import generate, hf_generate
from kdlight.models.fast_decode import unsupported_reason
from kdlight.processes import prepare_compute


def model_spec(name: str) -> ModelSpec:
    """conf/model/<name>.yaml as Hydra composes it: its `defaults` (other model files) underneath."""
    fields = OmegaConf.to_container(model_config(name))
    fields.pop("_target_", None)
    return ModelSpec(**fields)


def model_config(name: str):
    config = OmegaConf.load(REPO / "conf" / "model" / f"{name}.yaml")
    bases = [d for d in config.pop("defaults", []) if d != "_self_"]
    return OmegaConf.merge(*(model_config(b) for b in bases), config)


def synthetic_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer of `vocab_size` tokens trained on random words (no data needed)."""
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8))) for _ in range(3000)]
    return train_tokenizer([" ".join(rng.choice(words) for _ in range(30)) for _ in range(500)], vocab_size=vocab_size)


def timed(decode) -> tuple[float, list[list[int]]]:
    started = time.perf_counter()
    out = decode()
    return time.perf_counter() - started, out


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def bench(name: str, strategy: str, tokenizer, args) -> dict:
    torch.manual_seed(0)
    model = build_model(model_spec(name), tokenizer).eval()
    decoding = Decoding(strategy, max_new_tokens=args.new_tokens)
    compiled = Decoding(strategy, max_new_tokens=args.new_tokens, compile=True)
    reason = unsupported_reason(model, strategy, decoding.top_k, decoding.top_p)
    if reason is not None:
        raise SystemExit(f"{name}: the fast decoder does not take this model ({reason})")
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(5, len(tokenizer), (args.prompt_tokens,), generator=g).tolist() for _ in range(args.batch)]
    batch = collate(prompts, [[tokenizer.eos_token_id]] * args.batch, list(range(args.batch)), tokenizer.pad_token_id)
    ids = (tokenizer.eos_token_id, tokenizer.pad_token_id, len(tokenizer))
    decoders = {"hf": lambda: hf_generate(model, batch, decoding, *ids), "fast": lambda: generate(model, batch, decoding, *ids)}
    if args.compile:
        decoders["compiled"] = lambda: generate(model, batch, compiled, *ids)
    decoders["floor"] = lambda: matmul_floor(model, batch, args.new_tokens)

    def run(which: str) -> tuple[float, list[list[int]]]:
        torch.manual_seed(123)  # the same draws for both when sampling
        return timed(decoders[which])

    outputs = {which: run(which)[1] for which in decoders}  # warm-up (and compilation), excluded
    check_greedy(name, strategy, outputs, "warm-up")
    seconds = {which: [] for which in decoders}
    tokens = {which: [] for which in decoders}
    equal_samples = True
    for block in range(args.blocks):
        order = list(decoders) if block % 2 == 0 else list(reversed(decoders))
        block_out = {}
        for which in order:
            elapsed, out = run(which)
            seconds[which].append(elapsed)
            tokens[which].append(sum(len(row) for row in out))
            block_out[which] = out
        check_greedy(name, strategy, block_out, f"block {block}")
        equal_samples &= all(block_out[which] == block_out["hf"] for which in decoders if which != "floor")
    rates = {which: [n / s for n, s in zip(tokens[which], seconds[which])] for which in decoders}
    return {"model": name, "parameters": count_parameters(model), "strategy": strategy,
            "outputs_equal": equal_samples, "seconds": seconds, "tokens": tokens,
            "tokens_per_s": {which: summary(rates[which]) for which in decoders},
            "ratio": {which: statistics.median(rates[which]) / statistics.median(rates["hf"]) for which in decoders}}


@torch.no_grad()
def matmul_floor(model, batch, new_tokens: int) -> list[list[int]]:
    """What no eager float32 decoder of this model gets below: the prompt's forward (logits of
    its last position only) plus, for each further token, every linear layer once on the batch's
    rows (no attention, norms, rotary, sampling or bookkeeping). Returns B rows of `new_tokens`
    dummy tokens, so its tokens/s counts every row as decoded to the end."""
    base = model.model
    base(input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask, use_cache=True)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = [torch.randn(batch.size, 1, m.in_features) for m in linears]
    for _ in range(new_tokens - 1):
        for linear, x in zip(linears, inputs):
            linear(x)
    return [[0] * new_tokens for _ in range(batch.size)]


def check_greedy(name: str, strategy: str, outputs: dict[str, list[list[int]]], when: str) -> None:
    """Abort unless every decoder's greedy outputs equal HF generate's, token for token."""
    for which, out in outputs.items():
        if strategy == "greedy" and which != "floor" and out != outputs["hf"]:
            rows = [i for i, (a, b) in enumerate(zip(out, outputs["hf"])) if a != b]
            raise SystemExit(f"ABORT: {name}: {which} greedy outputs differ from HF generate's ({when}, rows {rows})")


def table(rows: list[dict]) -> str:
    decoders = list(rows[0]["tokens_per_s"])
    names = {"hf": "HF generate", "fast": "fast", "compiled": "fast + torch.compile", "floor": "matmul floor"}
    header = ["model", "parameters", "strategy"] + [f"{names[d]} tok/s" for d in decoders]
    header += [f"{names[d]} / HF" for d in decoders[1:]] + ["outputs equal"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["model"], f"{r['parameters'] / 1e6:.2f}M", r["strategy"]]
        cells += [f"{s['median']:.0f} ({s['min']:.0f}–{s['max']:.0f})" for s in r["tokens_per_s"].values()]
        cells += [f"{r['ratio'][d]:.2f}x" for d in decoders[1:]] + ["yes" if r["outputs_equal"] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="llama-xs,llama-m,llama-l")
    parser.add_argument("--strategies", default="greedy,sample")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=11)
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="skip the torch.compile column (its compilation takes tens of seconds per model)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "decode_bench.json")
    args = parser.parse_args()
    prepare_compute(args.threads)  # as kdlight's commands set up their process
    tokenizer = synthetic_tokenizer(args.vocab)
    rows = [bench(name, strategy, tokenizer, args) for name in args.models.split(",")
            for strategy in args.strategies.split(",")]
    print(table(rows))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {"settings": settings, "vocab_size": len(tokenizer), "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
