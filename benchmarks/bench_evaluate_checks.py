"""Cost of the untrusted-input checks over a whole evaluation: time with them / time without.

    nice -n 10 .venv/bin/python benchmarks/bench_evaluate_checks.py [--repeats 3]
        [--max-items 16] [--keep DIR] [--threads N]

One run is `load_model()` (the embedded model) + `load_benchmark(DIR)` + `evaluate(...)`
(`--max-items` per split and task, seed 0, the closed-world judge, answer probabilities), on
the synthetic benchmark exported once in the user format (`export_benchmark`, 4 304 portrait
files; `--keep DIR` keeps and reuses it), so that the dataset checks read real files. "checked"
and "unchecked" runs take turns after a warm-up of each; the best of `--repeats` is compared.

Switched off in the "unchecked" runs (here only; users have no switch):
- the model folder's checks and the chat-template render (`bench_load_checks.unchecked`);
- every dataset path resolved inside its directory (`data.files.dataset_file` -> a plain join);
- every image header against the pixel budget at load (`check_image` -> nothing) and on use
  (`open_image` -> a plain PIL decode);
- empty and repeated questions (`schema.check_questions` -> nothing);
- the prompt-length check before each batch (`generation.check_prompt_lengths` -> nothing).
The CLI's own checks (input vs output paths, the write lock) run once per command and are not
in this loop.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from PIL import Image

import asru_lab as al
from asru_lab import generation
from asru_lab.data import schema, user_format
from asru_lab.evaluation.harness import EvalConfig

sys.path.insert(0, str(Path(__file__).parent))
from bench_load_checks import unchecked as unchecked_model  # noqa: E402


def _plain_file(root: Path, name: str, *args, **kwargs) -> Path:
    return Path(root) / name


def _plain_image(source, name=None) -> Image.Image:
    with Image.open(source) as img:
        return img.convert("RGB")


@contextmanager
def unchecked():
    """Every check listed in the module docstring off (benchmark only)."""
    swaps = [
        (user_format, "dataset_file", _plain_file),
        (schema, "dataset_file", _plain_file),
        (user_format, "check_image", lambda *a: None),
        (schema, "open_image", _plain_image),
        (schema, "check_questions", lambda *a: None),
        (generation, "check_prompt_lengths", lambda *a: None),
    ]
    saved = [(module, name, getattr(module, name)) for module, name, _ in swaps]
    with ExitStack() as stack:
        stack.enter_context(unchecked_model())
        for module, name, replacement in swaps:
            setattr(module, name, replacement)
        try:
            yield
        finally:
            for module, name, original in saved:
                setattr(module, name, original)


def one_run(data: Path, max_items: int) -> tuple[float, dict]:
    start = time.perf_counter()
    lm = al.load_model()
    bench = al.load_benchmark(str(data))
    report = al.evaluate(lm, bench, EvalConfig(max_items=max_items, seed=0, progress=False))
    return time.perf_counter() - start, report.splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-items", type=int, default=16)
    parser.add_argument("--keep", type=Path, help="export the benchmark here once and reuse it")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scratch = None
    data = args.keep
    if data is None:
        scratch = Path(tempfile.mkdtemp(prefix="bench_eval_checks."))
        data = scratch / "bench"
    if not (data / "qa.jsonl").is_file():
        start = time.perf_counter()
        user_format.export_benchmark(al.load_benchmark(), data)
        print(f"exported the synthetic benchmark to {data} in {time.perf_counter() - start:.0f} s")
    try:
        times: dict[str, list[float]] = {"checked": [], "unchecked": []}
        results = {}
        for turn in range(args.repeats + 1):  # turn 0 warms both up
            for kind in times:
                with unchecked() if kind == "unchecked" else ExitStack():
                    seconds, results[kind] = one_run(data, args.max_items)
                if turn:
                    times[kind].append(seconds)
                print(f"  {kind:9s} run {turn}: {seconds:.2f} s", flush=True)
        assert results["checked"] == results["unchecked"], "the checks changed a number"
        best = {kind: min(values) for kind, values in times.items()}
        print(
            f"\nevaluate on the embedded model, {args.max_items} items per split and task, "
            f"best of {args.repeats}: checked {best['checked']:.2f} s, unchecked "
            f"{best['unchecked']:.2f} s -> ratio {best['checked'] / best['unchecked']:.3f}"
        )
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
