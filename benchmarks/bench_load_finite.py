"""Cost of `load_model`'s NaN/Inf check: load time with it / load time without it.

    nice -n 10 .venv/bin/python benchmarks/bench_load_finite.py [--repeats 5] [--keep DIR]
        [--dtypes bfloat16,float32] [--threads N]

(a) the embedded model (`load_model()`, float32); (b) a random Qwen3-VL at the real 2B sizes
(text hidden 2048, 28 layers, FFN 6144, 16 / 8 heads, head_dim 128, vocab 151 936, tied
embeddings; ViT depth 24, width 1024), built on the meta device, filled with random bfloat16
values and saved once with `save_pretrained` (4.3 GB; `--keep DIR` keeps and reuses it), loaded
as each of `--dtypes`. After a warm-up load (the file then sits in the page cache), three kinds
of load take turns and the best of `--repeats` each is compared: without the check, with it, and
without it followed by one plain read of every weight (a `sum` per tensor).

A bfloat16 checkpoint loaded as bfloat16 is memory-mapped: `from_pretrained` returns before a
byte of the weights is read, and the check is the first read (page faults), a cost the first
forward pass pays otherwise. So the bound, <= 1.10, is on load with the check / load followed by
one read; "finite check / load without it" is printed beside it. The check alone, on weights
already in memory, is timed too. Peak memory: one model at a time (9.8 GB for (b) as float32).
"""

from __future__ import annotations

import argparse
import gc
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

from asru_lab.models.embedded import embedded_dir
from asru_lab.models.loading import _check_finite, _checked_weight_files, load_model

BOUND = 1.10
QWEN3_VL_2B = Qwen3VLConfig(
    text_config={
        "vocab_size": 151936,
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "max_position_embeddings": 262144,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
        "tie_word_embeddings": True,
        "pad_token_id": 151643,
        "eos_token_id": 151645,
    },
    vision_config={
        "depth": 24,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_heads": 16,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": 2048,
        "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [5, 11, 17],
    },
    image_token_id=151655,
    video_token_id=151656,
    vision_start_token_id=151652,
    vision_end_token_id=151653,
    tie_word_embeddings=True,
)


def build_random_2b(out_dir: Path) -> Path:
    """Save a random bfloat16 Qwen3-VL of the 2B sizes and the embedded processor to `out_dir`."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            model = Qwen3VLForConditionalGeneration(QWEN3_VL_2B)
    finally:
        torch.set_default_dtype(previous)
    model.to_empty(device="cpu")  # uninitialised memory: every saved tensor is filled below
    model.tie_weights()  # to_empty gave lm_head its own tensor
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.normal_(0.0, 0.02, generator=gen)
    model.save_pretrained(out_dir)
    del model
    gc.collect()
    shutil.copy(embedded_dir() / "processor_config.json", out_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(embedded_dir() / name, out_dir)
    return out_dir


def read_once(model: torch.nn.Module) -> None:
    """Read every weight once (a sum per tensor), as a first forward pass would."""
    for tensor in {t.data_ptr(): t for t in model.state_dict().values()}.values():
        tensor.sum()


def timed_load(path: Path | None, dtype: str | None, kind: str) -> float:
    """Seconds for one `load_model` call of `kind`; the model is freed before returning."""
    start = time.perf_counter()
    lm = load_model(path, dtype=dtype, check_finite=kind == "check")
    if kind == "read":
        read_once(lm.model)
    seconds = time.perf_counter() - start
    del lm
    gc.collect()
    return seconds


def measure(label: str, path: Path | None, dtype: str | None, repeats: int) -> float:
    """Print the best load time of each kind, the check alone and the ratios; return the bounded."""
    lm = load_model(path, dtype=dtype, check_finite=False)  # warm-up: page cache, imports
    params = sum(p.numel() for p in lm.model.parameters())
    check = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        _check_finite(lm.model, {}, label)
        check = min(check, time.perf_counter() - start)
    del lm
    gc.collect()
    start = time.perf_counter()
    _checked_weight_files(path or embedded_dir())
    headers = time.perf_counter() - start
    best = {"plain": float("inf"), "check": float("inf"), "read": float("inf")}
    for _ in range(repeats):
        for kind in best:
            best[kind] = min(best[kind], timed_load(path, dtype, kind))
    ratio = best["check"] / best["read"]
    print(
        f"{label}: {params / 1e6:.1f} M parameters, loaded as {dtype or 'float32'}\n"
        f"  load without check {best['plain']:.3f} s, with check {best['check']:.3f} s, "
        f"without check + one read of the weights {best['read']:.3f} s (best of {repeats})\n"
        f"  finite check alone {check * 1e3:.1f} ms (weights in memory); "
        f"safetensors header check {headers * 1e3:.1f} ms\n"
        f"  finite check / load without it = {best['check'] / best['plain']:.2f}\n"
        f"  finite check / load + one read = {ratio:.2f} "
        f"({'within' if ratio <= BOUND else 'OVER'} bound {BOUND})"
    )
    return ratio


def main(repeats: int, keep: Path | None, dtypes: list[str]) -> None:
    measure("(a) embedded model", None, None, repeats)
    work = keep or Path(tempfile.mkdtemp(prefix="qwen3vl-2b-"))
    try:
        if not (work / "config.json").is_file():
            start = time.perf_counter()
            build_random_2b(work)
            print(f"built the random 2B model in {time.perf_counter() - start:.0f} s at {work}")
        for dtype in dtypes:
            measure("(b) random Qwen3-VL, 2B sizes", work, dtype, repeats)
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed loads of each kind")
    parser.add_argument("--keep", type=Path, help="directory for the 2B model, kept and reused")
    parser.add_argument("--dtypes", default="bfloat16,float32", help="dtypes to load (b) as")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    main(args.repeats, args.keep, args.dtypes.split(","))
