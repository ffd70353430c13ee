"""Cost of `load_model`'s checks: load time with them / load time without them.

    nice -n 10 .venv/bin/python benchmarks/bench_load_checks.py [--repeats 5] [--keep DIR]
        [--dtypes float32] [--threads N] [--skip-2b]

(a) the embedded model (`load_model()`, float32); (b) a random Qwen3-VL at the real 2B sizes
built once by `asru-lab make-model --size qwen3-vl-2b --dtype float32` (8.5 GB on disk;
`--keep DIR` keeps and reuses it), loaded as each of `--dtypes`. After a warm-up load (the
files then sit in the page cache), four kinds of load take turns and the best of `--repeats`
each is compared (6 x `--repeats` for the embedded model, whose load takes ~50 ms):

- plain: no check at all (the folder is opened as is, no template render, no NaN/Inf pass);
- folder: the untrusted-folder checks (`models/folder.py`: no `auto_map`, every file inside the
  folder, typed metadata, every safetensors header against its file) and the chat template
  rendered once under its time limit;
- all: folder + the NaN/Inf check, i.e. `load_model` as users get it;
- read: plain, then one read of every weight (a `sum` per tensor), the cost the first forward
  pass pays anyway (a bfloat16 load only memory-maps the file: the NaN/Inf check is its first
  read).

The checks are switched off here by replacing `loading.open_model_folder` and
`loading.check_chat_templates` for the "plain" and "read" loads only; users have no switch.
Peak memory: one model at a time (9 GB for (b) as float32).
"""

from __future__ import annotations

import argparse
import gc
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch

from asru_lab.models import loading
from asru_lab.models.embedded import EMBEDDED_NAME, embedded_dir
from asru_lab.models.folder import ModelFolder, check_chat_templates, open_model_folder

KINDS = ("plain", "folder", "all", "read")


@contextmanager
def unchecked():
    """`load_model` without the folder checks and the template render (benchmark only)."""
    saved = loading.open_model_folder, loading.check_chat_templates

    def as_is(name_or_path) -> ModelFolder:
        path = Path(name_or_path) if name_or_path is not None else embedded_dir()
        return ModelFolder(path, str(name_or_path or EMBEDDED_NAME))

    loading.open_model_folder, loading.check_chat_templates = as_is, lambda *args: None
    try:
        yield
    finally:
        loading.open_model_folder, loading.check_chat_templates = saved


def read_once(model: torch.nn.Module) -> None:
    """Read every weight once (a sum per tensor), as a first forward pass would."""
    for tensor in {t.data_ptr(): t for t in model.state_dict().values()}.values():
        tensor.sum()


def timed_load(path: Path | None, dtype: str | None, kind: str) -> float:
    """Seconds for one `load_model` call of `kind`; the model is freed before returning."""
    start = time.perf_counter()
    if kind in ("plain", "read"):
        with unchecked():
            lm = loading.load_model(path, dtype=dtype, check_finite=False)
    else:
        lm = loading.load_model(path, dtype=dtype, check_finite=kind == "all")
    if kind == "read":
        read_once(lm.model)
    seconds = time.perf_counter() - start
    del lm
    gc.collect()
    return seconds


def best_of(repeats: int, fn) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(label: str, path: Path | None, dtype: str | None, repeats: int) -> None:
    """Print the best load time of each kind, each check alone, and the ratios."""
    lm = loading.load_model(path, dtype=dtype)  # warm-up: page cache, imports
    params = sum(p.numel() for p in lm.model.parameters())
    folder = best_of(repeats, partial(open_model_folder, path))
    template = best_of(
        repeats, partial(check_chat_templates, lm.processor, lm.adapter, Path(lm.source))
    )
    finite = best_of(repeats, partial(loading._check_finite, lm.model, {}, label))
    del lm
    gc.collect()
    best = dict.fromkeys(KINDS, float("inf"))
    for turn in range(repeats):
        for kind in KINDS[turn % 4 :] + KINDS[: turn % 4]:  # each kind first in turn
            best[kind] = min(best[kind], timed_load(path, dtype, kind))
    print(
        f"{label}: {params / 1e6:.1f} M parameters, loaded as {dtype or 'float32'} "
        f"(best of {repeats})\n"
        + "".join(f"  load {kind:6s} {best[kind]:.3f} s\n" for kind in KINDS)
        + f"  alone: folder checks {folder * 1e3:.1f} ms, template render {template * 1e3:.1f} ms,"
        f" NaN/Inf check {finite * 1e3:.1f} ms (weights in memory)\n"
        f"  folder / plain = {best['folder'] / best['plain']:.2f}  (the new checks)\n"
        f"  all / plain    = {best['all'] / best['plain']:.2f}  (every check)\n"
        f"  all / read     = {best['all'] / best['read']:.2f}  (every check vs load + one read)"
    )


def build_random_2b(out_dir: Path) -> None:
    """`asru-lab make-model --size qwen3-vl-2b --dtype float32 --out out_dir`."""
    command = [sys.executable, "-m", "asru_lab.cli", "make-model", "--size", "qwen3-vl-2b"]
    subprocess.run([*command, "--dtype", "float32", "--out", str(out_dir)], check=True)


def main(repeats: int, keep: Path | None, dtypes: list[str], skip_2b: bool) -> None:
    # a load of the embedded model takes ~50 ms: more repeats to see past a shared machine
    measure("(a) embedded model", None, None, repeats * 6)
    if skip_2b:
        return
    work = keep or Path(tempfile.mkdtemp(prefix="qwen3vl-2b-")) / "model"
    try:
        if not (work / "config.json").is_file():
            start = time.perf_counter()
            build_random_2b(work)
            print(f"built the random 2B model in {time.perf_counter() - start:.0f} s at {work}")
        for dtype in dtypes:
            measure("(b) random Qwen3-VL, 2B sizes", work, dtype, repeats)
    finally:
        if keep is None:
            shutil.rmtree(work.parent, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed loads of each kind")
    parser.add_argument("--keep", type=Path, help="directory for the 2B model, kept and reused")
    parser.add_argument("--dtypes", default="float32", help="dtypes to load (b) as")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--skip-2b", action="store_true", help="measure the embedded model only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    main(args.repeats, args.keep, args.dtypes.split(","), args.skip_2b)
