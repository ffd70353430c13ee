"""Every stage of the pipeline on a random-weight Qwen3-VL at a real size: per stage the
seconds, the peak memory and the largest single tensor it allocated.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_scale.py --size qwen3-vl-2b
    .venv/bin/python benchmarks/bench_scale.py --size tiny                   # a dry run, ~1 min
    python benchmarks/bench_scale.py --size qwen3-vl-4b --device cuda --dtype bfloat16

The model (`asru_lab.models.sizes`) has the published dimensions and random weights, around
the embedded tokenizer (ids padded into the 151 936-row vocabulary) and Qwen3-VL's real image
processing (patch 16, merge 2, 448 x 448 -> 196 image tokens per portrait). Its answers are
noise, so two stages get stand-ins for what a trained model would provide: `locate` is given a
judge that calls every answer a refusal (a random model refuses nothing, and `locate` needs
refused unseen faces), and causal tracing accepts any drop (`min_drop` 0). Costs do not
depend on what the weights know.

Sample sizes (stated, small; `--scale` multiplies the example counts):
  generate   2 image questions, 8 new tokens
  evaluate   the forget split, 2 items per task (qa, mcq, cloze), with answer probabilities
  locate     8 forget / 8 target / 8 retain examples (+ other-task sets), every layer captured
             at 6 positions (one pass per set), 1 candidate layer, 1 strength, sweep 4 + 4
  redirect   closed form, 4 forget + 8 retain examples; SGD: 2 steps (batch 2)
  reinforce  LoRA r 8, 2 GRPO steps, 4 rollouts of 16 tokens per prompt, batch 4
             (--checkpointing: with activation checkpointing)
  rollouts   HF generate, 2 prompts x 4 sampled completions of 32 tokens (GRPO's path)
  causal     1 person, 3 layers, residual stream, every position group
  audit      every attack kind on 2 items (relearn: 2 steps, checkpointed; inputs: flip)

Peak memory is the process's peak resident set (VmHWM, reset before each stage) on CPU, and
`torch.cuda.max_memory_allocated` on a GPU. The largest tensor is the largest single output
of any torch operation during the stage (a `TorchDispatchMode` sees every one); "logits" when
its last dimension is the vocabulary.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asru_lab as al  # noqa: E402
from asru_lab.auditing import ATTACKS  # noqa: E402
from asru_lab.evaluation.judge import Judgement  # noqa: E402
from asru_lab.models.sizes import build_random_model, get_size  # noqa: E402

GiB = 1024**3


class Largest(TorchDispatchMode):
    """Remembers the largest tensor any op returns while active (bytes, op, shape, dtype)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.best = (0, "", (), "")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor) and not t.is_meta
        }
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not t.is_meta:
                # new memory only: a view (transpose, expand, slice) allocates nothing
                storage = t.untyped_storage()
                size = 0 if storage.data_ptr() in inputs else storage.nbytes()
                if size > self.best[0]:
                    self.best = (size, str(func.__name__), tuple(t.shape), str(t.dtype))
        return out

    def describe(self, hidden: int) -> str:
        size, op, shape, dtype = self.best
        if not size:
            return "-"
        # a vocabulary-wide tensor that is not the [hidden, vocab] head weight itself
        logits = len(shape) >= 2 and shape[-1] == self.vocab and shape[-2] != hidden
        what = "logits " if logits else ""
        return f"{what}{list(shape)} {dtype.replace('torch.', '')} ({op}) {size / GiB:.2f} GiB"


class AllRefused:
    """Stand-in judge for a random model: every answer is a contextual refusal."""

    def judge(self, items, answers):
        return [Judgement("contextual_refusal", 5.0, 5.0, 5.0, "stand-in") for _ in answers]


def _rss_reset() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _rss_peak() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / GiB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB


class Stages:
    def __init__(self, device: str, vocab: int, hidden: int):
        self.device, self.vocab, self.hidden = device, vocab, hidden
        self.rows: list[dict] = []

    def run(self, name: str, fn: Callable[[], object], note: str = "") -> object:
        cuda = self.device.startswith("cuda")
        gc.collect()  # what the previous stage left (a trainer's cycles) is not this one's
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        _rss_reset()
        largest = Largest(self.vocab)
        started = time.perf_counter()
        error = None
        try:
            with largest:
                result = fn()
        except Exception as exc:  # a stage that fails is reported, the others still run
            result, error = None, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        if cuda:
            torch.cuda.synchronize()
        row = {
            "stage": name,
            "seconds": round(time.perf_counter() - started, 1),
            "peak_rss_gib": round(_rss_peak(), 2),
            "largest": largest.describe(self.hidden),
            "note": note if error is None else f"FAILED {error}",
        }
        if cuda:
            row["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / GiB, 2)
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        return result

    def table(self) -> str:
        gpu = any("peak_gpu_gib" in r for r in self.rows)
        head = "| stage | seconds | peak RSS (GiB) |" + (" peak GPU (GiB) |" if gpu else "")
        head += " largest tensor | note |"
        lines = [head, "|" + "---|" * (head.count("|") - 1)]
        for r in self.rows:
            gpu_cell = f" {r['peak_gpu_gib']} |" if gpu else ""
            lines.append(
                f"| {r['stage']} | {r['seconds']} | {r['peak_rss_gib']} |{gpu_cell} "
                f"{r['largest']} | {r['note']} |"
            )
        return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="qwen3-vl-2b", help="a models.sizes name (or name/N)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--scale", type=int, default=1, help="multiply the example counts")
    parser.add_argument(
        "--stages",
        nargs="*",
        default=None,
        help="run only these (build always runs): generate evaluate locate redirect reinforce "
        "rollouts causal audit",
    )
    parser.add_argument(
        "--attacks", nargs="*", default=list(ATTACKS), help="the audit's attacks (default: all)"
    )
    parser.add_argument(
        "--checkpointing",
        action="store_true",
        help="reinforce with activation checkpointing (the audit's relearning always has it)",
    )
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.manual_seed(0)
    size = get_size(args.size)
    want = set(
        args.stages or "generate evaluate locate redirect reinforce rollouts causal audit".split()
    )
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    n = args.scale
    params = size.parameters()["total"]
    print(
        f"# bench_scale: {size.name}, {params / 1e9:.2f} B parameters, {args.dtype} on "
        f"{args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )
    stages = Stages(args.device, size.vocab, size.hidden)
    bench = al.load_benchmark()
    lm = stages.run(
        "build (random init)",
        lambda: build_random_model(size, dtype=dtype, device=args.device),
        f"{params / 1e9:.2f} B params; weights {params * dtype.itemsize / GiB:.1f} GiB",
    )
    if lm is None:
        print(stages.table())
        return 1
    image_qs = bench.questions("forget", "qa", image_only=True)

    if "generate" in want:
        items = image_qs[: 2 * n]
        stages.run(
            "generate",
            lambda: al.generate(
                lm,
                [bench.load_image(i.image) for i in items],
                [i.question for i in items],
                max_new_tokens=8,
                batch_size=2 * n,
                progress=False,
            ),
            f"{len(items)} image questions x 8 tokens",
        )
    if "evaluate" in want:
        config = al.EvalConfig(splits=("forget",), max_items=2 * n, batch_size=2, progress=False)
        stages.run(
            "evaluate",
            lambda: al.evaluate(lm, bench, config),
            f"forget split, {2 * n} items per task, answer probabilities",
        )
    probe = None
    if "locate" in want or "redirect" in want:
        config = al.LocateConfig(
            max_examples=8 * n,
            retain_examples=8 * n,
            sweep_forget=4 * n,
            sweep_retain=4 * n,
            n_candidates=1,
            strengths=(2.0,),
            positions=("last",),
            gate_max_fpr=(0.25,),
            max_new_tokens=4,
            max_retain_drop=0.25,
            batch_size=4,
            progress=False,
        )
        probe = stages.run(
            "locate",
            lambda: al.locate(lm, bench, config, judge=AllRefused()),
            f"{lm.num_layers} layers x 6 positions, one pass per set; stand-in judge",
        )
    if "redirect" in want and probe is not None:
        closed = al.RedirectConfig(
            solver="closed_form", max_forget=4 * n, max_retain=8 * n, capture_batch_size=4,
            progress=False,
        )  # fmt: skip
        stages.run(
            "redirect (closed form)",
            lambda: al.redirect(lm, probe, bench, closed),
            "4 forget + 8 retain; copies one down_proj",
        )
        sgd = al.RedirectConfig(
            solver="sgd", max_forget=4, max_retain=4, batch_size=2, epochs=1, progress=False
        )
        stages.run("redirect (SGD, 2 steps)", lambda: al.redirect(lm, probe, bench, sgd))
    if "reinforce" in want:
        config = al.ReinforceConfig(
            max_steps=2, num_generations=4, batch_size=4, n_forget=2, n_boundary=2,
            boundary="random", max_completion_length=16, lora_r=8, logging_steps=1,
            probe_every=0, activation_checkpointing=args.checkpointing, progress=False,
        )  # fmt: skip

        def reinforce():
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                return al.reinforce(lm, bench, config, output_dir=tmp)

        what = "2 steps x 4 rollouts x 16 tokens" + (", checkpointed" if args.checkpointing else "")
        stages.run("reinforce (GRPO, LoRA)", reinforce, what)
    if "rollouts" in want:
        from asru_lab.generation import encode_items

        def rollouts():
            batch = encode_items(lm, bench, image_qs[:2])
            with torch.no_grad():
                out = lm.model.generate(
                    **batch, do_sample=True, temperature=1.5, top_p=0.95, max_new_tokens=32,
                    min_new_tokens=32, num_return_sequences=4,
                    pad_token_id=lm.tokenizer.pad_token_id,
                )  # fmt: skip
            return out.shape[0]

        started = time.perf_counter()
        count = stages.run("rollouts (HF generate)", rollouts)
        seconds = time.perf_counter() - started
        if count:
            stages.rows[-1]["note"] = f"{count} x 32 tokens: {count / seconds:.2f} rollouts/s"
    if "causal" in want:
        from asru_lab.causal import CausalTraceConfig, trace_causal

        k = lm.num_layers
        config = CausalTraceConfig(
            max_people=1, layers=(0, k // 2, k - 1), components=("residual",), min_drop=0.0,
            batch_size=8, progress=False,
        )  # fmt: skip
        stages.run("causal tracing", lambda: trace_causal(lm, bench, config), "1 person, 3 layers")
    if "audit" in want:
        config = al.AuditConfig(
            attacks=tuple(args.attacks), max_items=2 * n, relearn_steps=(0, 2), batch_size=2,
            max_new_tokens=8, perturbations=("flip",), progress=False,
        )  # fmt: skip
        report = stages.run(
            "audit (every attack kind)",
            lambda: al.audit(lm, bench, reference=lm, config=config),
            f"{', '.join(args.attacks)}; {2 * n} items",
        )
        if report is not None:  # the seconds of each attack (and of the no-attack baseline)
            each = ", ".join(f"{k} {v:g} s" for k, v in report.timing.items() if k != "total")
            stages.rows[-1]["note"] += f"; {each}"
            print(f"# audit seconds per attack: {each}", flush=True)
    print()
    print(stages.table())
    if args.out:
        Path(args.out).write_text(json.dumps({"size": size.name, "rows": stages.rows}, indent=2))
    return 1 if any(r["note"].startswith("FAILED") for r in stages.rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
