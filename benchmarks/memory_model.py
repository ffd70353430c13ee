"""The memory model: what each stage needs at 2B / 4B / 8B, computed from the dimensions.

    .venv/bin/python benchmarks/memory_model.py [--dtype-bytes 2] [--rollouts 8 --tokens 512]

Computed, not measured (no 4B/8B weights or GPU here; `bench_scale.py` measures the 2B on CPU
and `scripts/gpu_check.sh` the 4B on a GPU). Parameter counts come from `ModelSize.parameters()`
(they equal the built models' counts, tested). Per stage, in GiB, weights in `--dtype-bytes`:

- weights W = parameters x bytes.
- locate (no gradients): W + one batch's transient activations (B prompts x T tokens: the MLP's
  three FFN-wide tensors, 3 x B x T x FFN x bytes) + the logits, now at the last position only
  (B x V x 4) + the gate's raw captures kept on the host (examples x layers x hidden x 3 tokens
  x 4 bytes; 2 560 examples, the defaults).
- redirect, closed form: W + a copy of the one `down_proj` it changes (hidden x FFN x bytes) +
  its three streamed Gram matrices (forget, retain, preserve) and the solve's system, float64
  (4 x FFN^2 x 8). Before #19: + a full copy (W).
- reinforce (LoRA, TRL GRPO): the input model W + the policy's own copy of the language
  model's linears (where the adapter merges; the rest is shared) + LoRA weights, gradients and
  AdamW states (negligible at r 8) + activations kept for backward without checkpointing,
  ~34 x hidden bytes per token per layer at 16 bits (the usual transformer estimate, attention
  by SDPA/flash so no T^2 term), for rollouts x tokens tokens + the rollouts' KV cache
  (2 x layers x KV heads x head_dim x bytes per token) + TRL's chunked log-probs (no full
  logits). Before #19: + the whole W copied again. With `activation_checkpointing=True`: every
  decoder layer's input (layers x hidden x bytes per token) + one layer's activations instead.
- audit, relearning (LoRA r 16 on a twin that shares the audited model's weights): W + the
  activations of one step of `relearn_batch_size` examples x tokens (prompt + answer): without
  activation checkpointing all of them (~34 x hidden bytes per token per layer at 16 bits, as
  above); with it (the default since #19 for models of a billion parameters or more), every
  decoder layer's input (layers x hidden x bytes per token) + one layer's activations,
  recomputed in the backward pass.
- audit, full-parameter relearning (`relearn_modes` "full"): the audited model's W + a full
  copy W, its gradients W and AdamW's two moments 2 W (in the weights' dtype), the vision tower
  and merger included: 5 W + the checkpointed activations as above.
- logits, for scale: the full-vocabulary logits one GRPO batch would take at 4 bytes
  (rollouts x tokens x V), what TRL's fused head avoids.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asru_lab.models.sizes import SIZES  # noqa: E402

GiB = 1024**3


def model(
    name: str, bytes_: int, rollouts: int, tokens: int, batch: int, prompt: int, relearn: int
) -> dict:
    s = SIZES[name]
    p = s.parameters()
    weights = p["total"] * bytes_
    linears = (p["decoder"] - s.layers * 2 * s.hidden - s.hidden) * bytes_  # minus norms
    locate_act = 3 * batch * prompt * s.intermediate * bytes_
    captures = 2560 * s.layers * s.hidden * 3 * 4
    locate = weights + locate_act + batch * s.vocab * 4
    closed = weights + s.hidden * s.intermediate * bytes_ + 4 * s.intermediate**2 * 8
    n = rollouts * tokens
    activations = 34 * s.hidden * s.layers * n * bytes_ / 2
    kv = 2 * s.layers * s.kv_heads * s.text_head_dim * bytes_ * n
    reinforce = weights + linears + activations + kv
    # checkpointed: each layer's input kept, one layer's activations at a time
    checkpointed = s.layers * s.hidden * n * bytes_ + activations / s.layers
    m = relearn * (prompt + 30)  # a reference answer: ~30 tokens
    relearn_all = 34 * s.hidden * s.layers * m * bytes_ / 2
    relearn_checkpointed = s.layers * s.hidden * m * bytes_ + 34 * s.hidden * m * bytes_ / 2
    return {
        "params (B)": p["total"] / 1e9,
        "weights": weights / GiB,
        "locate": locate / GiB,
        "locate host captures": captures / GiB,
        "redirect (closed form)": closed / GiB,
        "redirect before": (closed + weights) / GiB,
        "reinforce (LoRA)": reinforce / GiB,
        "reinforce before": (reinforce + weights - linears) / GiB,
        "of which activations": activations / GiB,
        "reinforce (LoRA, checkpointed)": (reinforce - activations + checkpointed) / GiB,
        "audit relearning": (weights + relearn_checkpointed) / GiB,
        "audit relearning before": (weights + relearn_all) / GiB,
        "audit relearning (full)": (5 * weights + relearn_checkpointed) / GiB,
        "full logits (avoided)": n * s.vocab * 4 / GiB,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype-bytes", type=int, default=2, help="2: bf16 (GPU), 4: fp32")
    parser.add_argument("--rollouts", type=int, default=8, help="GRPO sequences per step")
    parser.add_argument("--tokens", type=int, default=512, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=32, help="locate prompts per pass")
    parser.add_argument("--prompt", type=int, default=230, help="tokens per locate prompt")
    parser.add_argument("--relearn", type=int, default=8, help="audit relearning batch")
    args = parser.parse_args()
    shape = (args.rollouts, args.tokens, args.batch, args.prompt, args.relearn)
    rows = {
        name: model(name, args.dtype_bytes, *shape)
        for name in ("qwen3-vl-2b", "qwen3-vl-4b", "qwen3-vl-8b")
    }
    print(
        f"# computed GiB, weights at {args.dtype_bytes} bytes; GRPO {args.rollouts} x "
        f"{args.tokens} tokens; locate {args.batch} x {args.prompt} tokens; relearning "
        f"{args.relearn} x {args.prompt + 30} tokens"
    )
    keys = list(next(iter(rows.values())))
    print("| | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))
    for key in keys:
        print(f"| {key} | " + " | ".join(f"{rows[n][key]:.1f}" for n in rows) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
