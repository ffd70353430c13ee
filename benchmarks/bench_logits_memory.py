"""Peak memory of GRPO's loss computation at Qwen3-VL-2B dimensions (hidden 2048, tied
151 936-row head): full-vocabulary logits vs the chunked log-probabilities stage 2 uses.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_logits_memory.py

The part measured is the head and the loss, forward and backward, from the decoder's last
hidden states (given, requiring grad) to the gradient of the summed completion log-probs:

- full:      logits = h @ W^T at every position, log_softmax, gather the completion tokens
             (the naive loss: batch x length x vocab floats, and as many again for the
             log-softmax and for its gradient);
- selective: logits only at the completion positions (`logits_to_keep`), then log-softmax and
             gather (TRL's earlier path);
- chunked:   TRL's fused LM head (`add_fused_lm_head`, what `reinforce` runs through TRL 1.16:
             `_ChunkedLogProbFunction`, the head applied to a few positions at a time, log-probs
             gathered per chunk, recomputed in backward).

Each variant runs in its own process; its number is the peak resident memory (VmHWM, reset
after the inputs are allocated) minus the resident memory at that point. Two shapes: the
bench's GRPO step (4 rollouts x 256 tokens, 16 generated) and the paper's (8 rollouts x 512
tokens, 256 generated). The ratio full / chunked is printed per shape.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

HIDDEN, VOCAB = 2048, 151_936
SHAPES = {"bench step": (4, 256, 16), "paper step": (8, 512, 256)}
GiB = 1024**3


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def run_variant(variant: str, batch: int, length: int, completion: int) -> dict:
    torch.manual_seed(0)
    weight = torch.randn(VOCAB, HIDDEN) * 0.02
    hidden = torch.randn(batch, length, HIDDEN).requires_grad_()
    tokens = torch.randint(0, VOCAB, (batch, length))
    Path("/proc/self/clear_refs").write_text("5")
    base = _rss("VmRSS:")
    if variant == "full":
        logits = hidden @ weight.T  # [B, T, V]
        logp = torch.log_softmax(logits[:, :-1], -1)
        picked = logp.gather(-1, tokens[:, 1:, None])[:, -completion:]
        picked.sum().backward()
    elif variant == "selective":
        from trl.trainer.utils import selective_log_softmax

        kept = hidden[:, -completion - 1 : -1]  # the positions that predict the completion
        logits = kept @ weight.T  # [B, C, V]
        selective_log_softmax(logits, tokens[:, -completion:]).sum().backward()
    elif variant == "chunked":
        from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE, _ChunkedLogProbFunction

        labels = tokens.clone()
        labels[:, :-completion] = -100
        flat = hidden[:, :-1].reshape(-1, HIDDEN)  # CPU: every position, masked after
        target = labels[:, 1:].clamp(min=0).reshape(-1)
        out = _ChunkedLogProbFunction.apply(
            flat, weight, None, target, 1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0, ("log_probs",)
        )
        log_probs = out[0].view(batch, length - 1).masked_fill(labels[:, 1:] == -100, 0)
        log_probs.sum().backward()
    else:
        raise SystemExit(f"unknown variant {variant}")
    return {"peak_gib": (_rss("VmHWM:") - base) / GiB}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default=None)
    parser.add_argument("--shape", default=None)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, *SHAPES[args.shape])))
        return 0
    print(f"# GRPO loss memory at hidden {HIDDEN}, vocab {VOCAB} (peak RSS above the inputs)")
    head = "| shape (rollouts x tokens, generated) | full | selective | chunked (TRL) |"
    print(head + " full / chunked |")
    print("|---|---|---|---|---|")
    for shape, (batch, length, completion) in SHAPES.items():
        peaks = {}
        for variant in ("full", "selective", "chunked"):
            cmd = [sys.executable, __file__, "--variant", variant, "--shape", shape]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            peaks[variant] = json.loads(out.strip().splitlines()[-1])["peak_gib"]
        print(
            f"| {shape}: {batch} x {length}, {completion} | {peaks['full']:.2f} GiB | "
            f"{peaks['selective']:.2f} GiB | {peaks['chunked']:.2f} GiB | "
            f"{peaks['full'] / max(peaks['chunked'], 1e-9):.1f}x |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
