"""Activation capture with nnsight: batched, any layers, streaming float64 statistics.

A *site* says which residual-stream tensor of decoder layer L is read:

- ``"output"``: what layer L's module returns. On Qwen3-VL, DeepStack adds visual features to
  the residual stream *after* the first layers' modules, so for those layers this tensor lacks
  them (see `ArchitectureAdapter.deepstack_layers`).
- ``"input"``: the hidden states layer L receives, i.e. the residual stream after layer L - 1
  *and* after any DeepStack injection.

A *position* says which tokens of each example are read:

- ``"last"``: the last prompt token (after ``<|im_start|>assistant\\n``), the paper's choice;
- a negative int ``-k``: the k-th prompt token from the end (``-1`` is ``"last"``);
- ``"prompt"``: every prompt token (padding excluded);
- ``"answer"``: the tokens of the item's reference answer, appended to the prompt.

Statistics stream in float64: per layer the count of token vectors read, their sum and sum of
squares, so memory does not grow with the data set. Multi-token positions are pooled per
example (their mean) for the per-example outputs: raw activations (`keep_raw`, for small sets)
and projections on given directions (what AUROC needs, for any set size).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from nnsight import NNsight

from asru_lab.data.schema import Benchmark, BenchmarkError, QAItem
from asru_lab.errors import AsruLabError
from asru_lab.generation import encode
from asru_lab.hooks import SITES, envoy_site
from asru_lab.models.adapters import AdapterError
from asru_lab.models.loading import LoadedModel
from asru_lab.progress import tqdm

POSITIONS = ("last", "prompt", "answer")


class TraceError(AsruLabError, ValueError):
    """A capture was asked for something that does not exist (site, position, layer, data)."""


def check_site(site: str) -> str:
    if site not in SITES:
        raise TraceError(f"unknown site {site!r}; expected one of {SITES}")
    return site


def check_position(position: str | int) -> str | int:
    if isinstance(position, bool) or not (
        position in POSITIONS or (isinstance(position, int) and position < 0)
    ):
        raise TraceError(
            f"unknown position {position!r}; expected one of {POSITIONS} or a negative int "
            "(-1 = last prompt token, -2 = the one before, ...)"
        )
    return position


def check_layers(lm: LoadedModel, layers: Sequence[int] | None) -> tuple[int, ...]:
    """Layer indices, validated and made non-negative; None means every decoder layer."""
    n = lm.num_layers
    if layers is None:
        return tuple(range(n))
    out = []
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not -n <= layer < n:
            raise AdapterError(
                f"layer {layer!r} does not exist: {lm.name} has {n} decoder layers "
                f"(valid: 0..{n - 1})"
            )
        out.append(layer % n)
    if not out:
        raise TraceError("no layers to capture")
    return tuple(sorted(set(out)))


def module_envoy(wrapped: NNsight, path: str):
    """The nnsight envoy for a dotted module path (digits index module lists)."""
    envoy = wrapped
    for part in path.split("."):
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    return envoy


def nnsight_model(lm: LoadedModel) -> NNsight:
    """The model wrapped for nnsight tracing (no copy of the weights)."""
    return NNsight(lm.model)


@dataclass
class Capture:
    """Streaming statistics of activations at `layers` for one set of examples.

    `sum`/`sumsq` are float64 `[n_layers, hidden]`, `count` the number of token vectors read
    per layer. `raw[layer]` (float32 `[n_examples, hidden]`) and `projections[layer]`
    (float64 `[n_examples, k]`) hold one pooled vector / k scores per example, in input order.
    """

    layers: tuple[int, ...]
    site: str
    position: str | int
    count: int = 0
    n_examples: int = 0
    sum: torch.Tensor | None = None
    sumsq: torch.Tensor | None = None
    raw: dict[int, torch.Tensor] = field(default_factory=dict)
    projections: dict[int, torch.Tensor] = field(default_factory=dict)
    person_ids: list[str] = field(default_factory=list)

    def index(self, layer: int) -> int:
        if layer not in self.layers:
            raise TraceError(f"layer {layer} was not captured (captured: {list(self.layers)})")
        return self.layers.index(layer)

    def mean(self, layer: int) -> torch.Tensor:
        """float64 `[hidden]` mean activation at `layer`."""
        if self.count == 0:
            raise TraceError("no activations were captured (empty example set)")
        return self.sum[self.index(layer)] / self.count

    def means(self) -> dict[int, torch.Tensor]:
        return {layer: self.mean(layer) for layer in self.layers}

    def var(self, layer: int) -> torch.Tensor:
        """float64 `[hidden]` per-dimension variance at `layer`."""
        m = self.mean(layer)
        return (self.sumsq[self.index(layer)] / self.count - m * m).clamp_min(0)


@dataclass
class _Batch:
    inputs: dict
    # per position: a [B, T] bool mask (multi-token positions) or a token index
    reads: dict


def _batch_inputs(
    lm: LoadedModel, bench: Benchmark, items: Sequence[QAItem], positions: Sequence[str | int]
) -> _Batch:
    """One processor batch for `items` and, for each position, what to read from it."""
    images = [bench.load_image(i.image) if i.image else None for i in items]
    questions = [i.question for i in items]
    if "answer" in positions:
        answers = [i.answer for i in items]
        inputs = encode(lm, images, questions, answers)
        eos = lm.tokenizer.eos_token or ""
        lengths = [
            len(lm.tokenizer(a + eos, add_special_tokens=False)["input_ids"]) for a in answers
        ]
        seq = inputs["input_ids"].shape[1]
        select = torch.zeros(len(items), seq, dtype=torch.bool, device=lm.device)
        for row, n in enumerate(lengths):
            select[row, seq - n : seq - 1] = True  # the answer tokens, not the end-of-turn token
        return _Batch(inputs, {"answer": select})
    inputs = encode(lm, images, questions)
    reads: dict = {}
    for position in positions:
        if position == "prompt":
            reads[position] = inputs["attention_mask"].bool()
            continue
        index = -1 if position == "last" else int(position)
        if -index > inputs["input_ids"].shape[1]:
            raise TraceError(f"position {position} is before the start of a prompt")
        reads[position] = index
    return _Batch(inputs, reads)


def _read_sites(
    lm: LoadedModel, wrapped: NNsight, batch: _Batch, layers: tuple[int, ...], site: str
) -> list[dict]:
    """One forward pass under nnsight; per layer, per position the `[B, D]` slice or the
    `[B, T, D]` tensor (multi-token positions). Only the token positions read are kept from
    the pass unless a multi-token position needs the whole sequence."""
    indexes = sorted({i for i in batch.reads.values() if isinstance(i, int)})
    whole = any(not isinstance(i, int) for i in batch.reads.values())
    saved = []
    # logits only at the last position: the pass is read for its hidden states, and full
    # logits cost batch x length x vocab floats (151 936 columns on a real Qwen3-VL)
    with torch.no_grad(), wrapped.trace(**batch.inputs, logits_to_keep=1):
        for layer in layers:
            hidden = envoy_site(module_envoy(wrapped, lm.adapter.layer_path(layer)), site)
            saved.append((hidden if whole else hidden[:, indexes, :]).save())
    out = []
    for tensor in saved:
        per_position = {}
        for position, read in batch.reads.items():
            if not isinstance(read, int):
                per_position[position] = tensor
            elif whole:
                per_position[position] = tensor[:, read, :]
            else:
                per_position[position] = tensor[:, indexes.index(read), :]
        out.append(per_position)
    return out


def capture(
    lm: LoadedModel,
    bench: Benchmark,
    items: Sequence[QAItem],
    *,
    layers: Sequence[int] | None = None,
    site: str = "output",
    position: str | int = "last",
    keep_raw: bool | Sequence[int] = False,
    directions: Mapping[int, torch.Tensor] | None = None,
    batch_size: int = 32,
    progress: bool = True,
    desc: str = "capture",
) -> Capture:
    """Read activations of `items` (prompts built like `generate` builds them) at `layers`.

    `keep_raw`: True keeps the pooled per-example activations of every layer, a list keeps
    those of the listed layers only. `directions`: layer -> `[hidden]` or `[k, hidden]`; the
    per-example projections on them are kept (float64). Returns a `Capture`. Several positions
    from one forward pass: `capture_positions`.
    """
    check_position(position)
    return capture_positions(
        lm,
        bench,
        items,
        positions=[position],
        layers=layers,
        site=site,
        keep_raw={position: keep_raw},
        directions={position: directions} if directions else None,
        batch_size=batch_size,
        progress=progress,
        desc=desc,
    )[position]


def capture_positions(
    lm: LoadedModel,
    bench: Benchmark,
    items: Sequence[QAItem],
    *,
    positions: Sequence[str | int],
    layers: Sequence[int] | None = None,
    site: str = "output",
    keep_raw: Mapping[str | int, bool | Sequence[int]] | None = None,
    directions: Mapping[str | int, Mapping[int, torch.Tensor] | None] | None = None,
    batch_size: int = 32,
    progress: bool = True,
    desc: str = "capture",
) -> dict[str | int, Capture]:
    """`capture` at several token positions from **one forward pass per batch**: position ->
    `Capture`, each exactly what `capture(..., position=p)` returns. `keep_raw` and
    `directions` are given per position (absent: none). "answer" appends the reference answer
    to the prompt, so it cannot share a pass with the prompt positions."""
    check_site(site)
    positions = list(dict.fromkeys(check_position(p) for p in positions))
    if not positions:
        raise TraceError("no positions to capture")
    if "answer" in positions and len(positions) > 1:
        raise TraceError(
            "position 'answer' reads prompt + answer and cannot share a pass with "
            f"{[p for p in positions if p != 'answer']}: capture it separately"
        )
    layers = check_layers(lm, layers)
    if not items:
        raise BenchmarkError(f"{desc}: no examples to capture (the set is empty)")
    if "answer" in positions and any(not i.answer for i in items):
        raise TraceError("position 'answer' needs items with a reference answer")
    keep_raw = dict(keep_raw or {})
    directions = dict(directions or {})
    unknown = [p for p in (*keep_raw, *directions) if p not in positions]
    if unknown:
        raise TraceError(f"keep_raw / directions given for positions not captured: {unknown}")
    raw_layers = {}
    dirs: dict = {}
    for p in positions:
        want = keep_raw.get(p, False)
        raw_layers[p] = set(layers if want is True else check_layers(lm, want) if want else ())
        dirs[p] = {}
        for layer, d in (directions.get(p) or {}).items():
            d = torch.as_tensor(d, dtype=torch.float64)
            dirs[p][layer] = d.reshape(-1, d.shape[-1]).T.contiguous()  # [hidden, k]
    acc = torch.float64 if lm.device.type != "mps" else torch.float32
    hidden = lm.hidden_size
    caps = {p: Capture(layers, site, p) for p in positions}
    raw: dict = {p: {layer: [] for layer in layers if layer in raw_layers[p]} for p in positions}
    proj: dict = {p: {layer: [] for layer in layers if layer in dirs[p]} for p in positions}
    for cap in caps.values():
        cap.sum = torch.zeros(len(layers), hidden, dtype=torch.float64)
        cap.sumsq = torch.zeros(len(layers), hidden, dtype=torch.float64)
    wrapped = nnsight_model(lm)
    was_training = lm.model.training
    lm.model.eval()
    try:
        with tqdm(total=len(items), desc=desc, disable=not progress, leave=False) as bar:
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                batch = _batch_inputs(lm, bench, chunk, positions)
                outputs = _read_sites(lm, wrapped, batch, layers, site)
                for p, cap in caps.items():
                    select = batch.reads[p]
                    for k, (layer, per_position) in enumerate(zip(layers, outputs, strict=True)):
                        out = per_position[p].to(acc)
                        if isinstance(select, int):
                            tokens, pooled, n = out, out, out.shape[0]
                        else:
                            mask = select.to(acc).unsqueeze(-1)
                            tokens = out * mask
                            per_row = mask.sum(1).clamp_min(1)
                            pooled = tokens.sum(1) / per_row
                            n = int(select.sum())
                        flat = tokens.reshape(-1, hidden)
                        cap.sum[k] += flat.sum(0).double().cpu()
                        cap.sumsq[k] += (flat * flat).sum(0).double().cpu()
                        if k == 0:
                            cap.count += n
                        if layer in raw[p]:
                            raw[p][layer].append(pooled.float().cpu())
                        if layer in proj[p]:
                            proj[p][layer].append(pooled.double().cpu() @ dirs[p][layer])
                    cap.n_examples += len(chunk)
                    cap.person_ids += [i.person_id for i in chunk]
                bar.update(len(chunk))
    finally:
        lm.model.train(was_training)
    for p, cap in caps.items():
        cap.raw = {layer: torch.cat(v) for layer, v in raw[p].items()}
        cap.projections = {layer: torch.cat(v) for layer, v in proj[p].items()}
    return caps
