"""Causal tracing: which layers and token positions, restored, bring a memorised fact back.

`locate` shows where forget and retain people are *represented* differently; causal tracing
(activation patching, as in Meng et al.'s ROME) asks where the model *recalls* a fact. For each
person, one image question whose reference answer contains the fact ("This is Alma Aldous." for
the name) is run three ways; the answer up to the fact is appended (teacher forcing), so the
measured quantity is the probability of the fact's first token at the last input token:

- **clean**: the true image -> `p_clean`; the activations of every site below are kept;
- **corrupted**: Gaussian noise on the visual tokens' embeddings as they enter the language
  model (the projector's output and, on Qwen3-VL, every DeepStack feature; standard deviation
  `noise_scale` x that person's own feature std), or another person's image (`"swap"`)
  -> `p_corrupt`;
- **patched**: the corrupted run with one site restored to its clean value at one group of
  token positions -> `p_patched`, and the recovered fraction
  `(p_patched - p_corrupt) / (p_clean - p_corrupt)`.

Sites (`COMPONENTS`): the residual stream after layer i (TransformerLens `blocks.{i}.hook_out`;
after the DeepStack injection on the layers that have one, i.e. `blocks.{i+1}.hook_in`), the
attention output of layer i (`blocks.{i}.hook_attn_out`) and its MLP output
(`blocks.{i}.hook_mlp_out`). Position groups (`GROUPS`): the image tokens, the question's
tokens, the chat-template tokens, the last prompt token (the one after
`<|im_start|>assistant\n`), the teacher-forced answer prefix and the last token (where the
fact's first token is predicted; the last prompt token itself when the prefix is empty, which
leaves the `last_prompt` and `answer_prefix` groups empty: their cells are None).

Two backends, one answer: TransformerLens's `TransformerBridge` (the default; booted on a
module-tree twin of the HF model that shares every weight tensor, so nothing is copied and the
caller's model is left as it was) and nnsight on the HF model itself. Runs of several people
are packed into batches of `batch_size` rows; each run is one row of one forward pass, nothing
is recomputed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from asru_lab.artifacts import claim_output, write_json_atomic
from asru_lab.capture import check_layers, module_envoy, nnsight_model
from asru_lab.data.schema import Benchmark, BenchmarkError, Person, QAItem
from asru_lab.errors import AsruLabError
from asru_lab.generation import build_prompt
from asru_lab.models.loading import LoadedModel
from asru_lab.validation import check_fields

COMPONENTS = ("residual", "attention", "mlp")
GROUPS = ("image", "question", "template", "last_prompt", "answer_prefix", "last")
CORRUPTIONS = ("noise", "swap")
BACKENDS = ("transformer_lens", "nnsight")
FORMAT = "asru_lab.causal_trace"
FORMAT_VERSION = 1
TRACE_FILE = "trace.json"
PEAK_TIE = 1e-3  # recovered fractions this close to the maximum tie (see CausalTrace.peak)


class CausalTraceError(AsruLabError, ValueError):
    """A causal trace was asked for something it cannot do; the message says what and why."""


@dataclass
class CausalTraceConfig:
    """What to trace and how (defaults: every layer, component and position group)."""

    split: str = "forget"  # whose people are traced when `people` is None
    people: tuple[str, ...] | None = None  # person ids; None: every person of `split`
    max_people: int | None = None  # cap on the people traced (first ones, in benchmark order)
    attribute: str = "name"  # the fact traced: a key of the people's facts
    question: str | None = None  # ask this wording instead of the benchmark's question
    corruption: str = "noise"  # "noise" on the visual tokens, or "swap" another person's image
    noise_scale: float = 3.0  # noise std in units of the person's own visual-feature std
    layers: tuple[int, ...] | None = None  # None: every decoder layer
    components: tuple[str, ...] = COMPONENTS
    groups: tuple[str, ...] = GROUPS
    backend: str = "transformer_lens"  # or "nnsight" (same numbers, any HF architecture)
    min_drop: float = 0.05  # people whose corruption lowers p_clean by less are left out of
    # the mean recovered fraction (their fraction is undefined); they stay in `people`
    batch_size: int = 32  # rows (runs) per forward pass
    seed: int = 0  # the noise (per person: seeded by seed and person id) and swap partners
    progress: bool = True

    def __post_init__(self) -> None:
        check_fields(
            self,
            CausalTraceError,
            max_people=">= 1",
            noise_scale="> 0",
            min_drop="[0, 1]",
            batch_size=">= 1",
        )
        for name, value, allowed in (
            ("corruption", self.corruption, CORRUPTIONS),
            ("backend", self.backend, BACKENDS),
        ):
            if value not in allowed:
                raise CausalTraceError(f"unknown {name} {value!r}; expected one of {allowed}")
        for name, values, allowed in (
            ("components", self.components, COMPONENTS),
            ("groups", self.groups, GROUPS),
        ):
            unknown = [v for v in values if v not in allowed]
            if unknown or not values:
                raise CausalTraceError(
                    f"{name} must be a non-empty subset of {allowed}, got {tuple(values)}"
                )
        if self.people is not None and not self.people:
            raise CausalTraceError("people is empty: give person ids, or None for the split")


# --- results --------------------------------------------------------------------------------
@dataclass
class PersonTrace:
    """One person's traced question and probabilities.

    `p_patched[component][k][g]`: probability of the target token with that component of
    layer `layers[k]` restored at position group `groups[g]` (None: the group is empty for this
    person's prompt, nothing to restore).
    """

    person_id: str
    name: str
    split: str
    question: str
    image: str
    attribute: str
    value: str
    answer_prefix: str
    target_token: str
    target_id: int
    swap_with: str | None
    group_sizes: dict[str, int]
    p_clean: float
    p_corrupt: float
    p_patched: dict[str, list[list[float | None]]]

    @property
    def drop(self) -> float:
        return self.p_clean - self.p_corrupt

    def fraction(self, component: str, min_drop: float = 0.0) -> list[list[float | None]] | None:
        """Recovered fraction per layer x group (None cells: empty groups); None when the
        corruption lowered p by less than `min_drop` (it would divide by next to nothing)."""
        if self.drop < max(min_drop, 1e-12):
            return None
        rows = self.p_patched[component]
        return [[None if p is None else (p - self.p_corrupt) / self.drop for p in r] for r in rows]


@dataclass
class CausalTrace:
    """What `trace_causal` measured; `save` / `load` round-trip it exactly (JSON)."""

    model: dict
    dataset_fingerprint: str
    config: dict
    layers: list[int]
    components: list[str]
    groups: list[str]
    hooks: dict[str, dict[str, list[str]]]  # backend -> component -> site per layer
    people: list[PersonTrace]
    timing: dict
    comparison: dict | None = None
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    # --- reading ------------------------------------------------------------------------
    def person(self, person_id: str) -> PersonTrace:
        for p in self.people:
            if p.person_id == person_id:
                return p
        raise CausalTraceError(
            f"person {person_id!r} is not in this trace (traced: "
            f"{', '.join(p.person_id for p in self.people)})"
        )

    def effective(self) -> list[PersonTrace]:
        """The people whose corruption lowered p by at least `min_drop` (the mean's basis)."""
        return [p for p in self.people if p.drop >= self.config["min_drop"]]

    def matrix(
        self, component: str, person: str | None = None, value: str = "fraction"
    ) -> list[list[float | None]]:
        """Layer x group values of one component: `value` "fraction" (recovered fraction) or
        "probability" (p_patched); `person` None averages over the people (fractions: over
        `effective()` ones; None entries when there are none)."""
        if component not in self.components:
            raise CausalTraceError(f"component {component!r} was not traced ({self.components})")
        if value not in ("fraction", "probability"):
            raise CausalTraceError(f"value must be 'fraction' or 'probability', not {value!r}")
        if person is not None:
            p = self.person(person)
            if value == "probability":
                return p.p_patched[component]
            frac = p.fraction(component, self.config["min_drop"])
            return frac if frac is not None else self._empty()
        if value == "probability":
            rows = [p.p_patched[component] for p in self.people]
        else:
            rows = [p.fraction(component) for p in self.effective()]
        if not rows:
            return self._empty()
        return [
            [_mean([r[k][g] for r in rows if r[k][g] is not None]) for g in range(len(self.groups))]
            for k in range(len(self.layers))
        ]

    def _empty(self) -> list[list[None]]:
        return [[None] * len(self.groups) for _ in self.layers]

    def peak(self, component: str, group: str | None = None) -> dict | None:
        """Where the mean recovered fraction peaks: {"component", "layer", "group",
        "fraction"}; `group` restricts to one position group. Values within `PEAK_TIE` of the
        maximum count as ties, won by the earliest layer (restoring the whole residual stream
        early recovers everything, and the earliest such layer is the informative one). None
        when no person's corruption hurt."""
        grid = self.matrix(component)
        cells = [
            (grid[k][g], layer, name)
            for k, layer in enumerate(self.layers)
            for g, name in enumerate(self.groups)
            if grid[k][g] is not None and (group is None or name == group)
        ]
        if not cells:
            return None
        top = max(v for v, _, _ in cells)
        v, layer, name = next(c for c in cells if c[0] >= top - PEAK_TIE)
        return {"component": component, "layer": layer, "group": name, "fraction": v}

    def first_layer(self, component: str, group: str, threshold: float = 0.5) -> int | None:
        """The earliest layer whose mean recovered fraction at `group` reaches `threshold`."""
        grid = self.matrix(component)
        g = self.groups.index(group)
        for k, layer in enumerate(self.layers):
            if grid[k][g] is not None and grid[k][g] >= threshold:
                return layer
        return None

    def summary(self) -> dict:
        """Peaks per component, the last-token residual peak and the mean probabilities."""
        effective = self.effective()
        out = {
            "people": len(self.people),
            "effective_people": len(effective),
            "mean_p_clean": _mean([p.p_clean for p in self.people]),
            "mean_p_corrupt": _mean([p.p_corrupt for p in self.people]),
            "peaks": {c: self.peak(c) for c in self.components},
        }
        if "residual" in self.components and "last" in self.groups:
            out["last_token_residual_peak"] = self.peak("residual", "last")
        return out

    def table(self, component: str = "residual") -> str:
        """The mean recovered fraction of one component as a fixed-width text table."""
        grid = self.matrix(component)
        head = f"{'layer':>5} " + " ".join(f"{g:>13}" for g in self.groups)
        lines = [f"{component}: mean recovered fraction ({len(self.effective())} people)", head]
        for k, layer in enumerate(self.layers):
            cells = " ".join("            -" if v is None else f"{v:>13.3f}" for v in grid[k])
            lines.append(f"{layer:>5} {cells}")
        return "\n".join(lines)

    # --- files ----------------------------------------------------------------------------
    def to_json(self) -> dict:
        data = asdict(self)
        data["summary"] = self.summary()
        return data

    def save(self, out_dir: str | Path, *, overwrite: bool = False) -> Path:
        """Write `out_dir/trace.json` atomically (other files in `out_dir` are kept; a folder
        that is not asru_lab's output needs `overwrite`, see `artifacts.check_output`)."""
        out = claim_output(out_dir, overwrite=overwrite)
        write_json_atomic(out / TRACE_FILE, self.to_json())
        return out

    @classmethod
    def load(cls, path: str | Path) -> CausalTrace:
        """Read a trace directory (or its trace.json); a damaged file is named in the error."""
        path = Path(path)
        file = path / TRACE_FILE if path.is_dir() else path
        if not file.is_file():
            raise CausalTraceError(f"no causal trace at {path} (expected {TRACE_FILE})")
        try:
            data = json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CausalTraceError(f"{file} is damaged: not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CausalTraceError(f"{file} is not a causal trace (field 'format' != {FORMAT!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise CausalTraceError(
                f"{file}: format_version {data.get('format_version')!r} is not supported "
                f"(this asru_lab reads {FORMAT_VERSION})"
            )
        data.pop("summary", None)
        try:
            data["people"] = [PersonTrace(**p) for p in data["people"]]
            return cls(**data)
        except (KeyError, TypeError) as exc:
            raise CausalTraceError(f"{file} is damaged: {exc}") from exc


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


# --- cases: one traced question per person ---------------------------------------------------
@dataclass
class _Case:
    person: Person
    item: QAItem
    question: str
    prefix: str
    target_id: int
    inputs: dict  # clean encoding, batch of one, no padding
    corrupt_inputs: dict  # the swap image's encoding, or `inputs` (noise)
    groups: dict[str, torch.Tensor]  # group -> bool [T]
    swap_with: str | None = None
    noise: list[torch.Tensor] = field(default_factory=list)  # per visual site, like its output
    clean: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)  # site -> [T, D]
    patched: dict[tuple, float] = field(default_factory=dict)  # (site, group) -> p
    p_clean: float = math.nan
    p_corrupt: float = math.nan


def _items_for(bench: Benchmark, person: Person, config: CausalTraceConfig) -> list[QAItem]:
    """The person's generation questions about `attribute`, the wanted split first."""
    items = [
        i
        for i in bench.items
        if i.person_id == person.id and i.task == "qa" and i.attribute == config.attribute
    ]
    return sorted(items, key=lambda i: (i.split != config.split, i.image is None))


def select_items(bench: Benchmark, config: CausalTraceConfig) -> list[QAItem]:
    """One image question per traced person (the first about `attribute`).

    Unknown person ids, and people without an image question about the attribute, are
    refused with the list of what exists.
    """
    if config.people is None:
        people = bench.people_in(config.split)
        if not people:
            raise BenchmarkError(
                f"split {config.split!r} of {bench.name} has no people to trace "
                f"(splits with people: {sorted({p.split for p in bench.people.values()})})"
            )
    else:
        missing = [pid for pid in config.people if pid not in bench.people]
        if missing:
            known = [p.id for p in bench.people_in(config.split)]
            shown = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
            raise CausalTraceError(
                f"person id {missing[0]!r} does not exist in {bench.name} "
                f"({len(bench.people)} people; {config.split} people: {shown})"
            )
        people = [bench.people[pid] for pid in config.people]
    items = []
    for person in people:
        found = _items_for(bench, person, config)
        if not found:
            raise CausalTraceError(
                f"person {person.id} ({person.name}) has no question about "
                f"{config.attribute!r} (their facts: {sorted(person.facts)})"
            )
        if found[0].image is None and config.people is not None:
            raise CausalTraceError(
                f"person {person.id} ({person.name}) has only text-only questions about "
                f"{config.attribute!r}, but corruption {config.corruption!r} corrupts the image"
            )
        if found[0].image is not None:
            items.append(found[0])
    if not items:
        raise CausalTraceError(
            f"no {config.split} person has an image question about {config.attribute!r}"
        )
    return items[: config.max_people] if config.max_people else items


def _target(lm: LoadedModel, prompt: str, item: QAItem) -> tuple[str, int]:
    """The answer prefix before the fact, and the fact's first token id after it."""
    at = item.answer.lower().find(item.value.lower())
    prefix = item.answer[:at].rstrip() if at > 0 else ""
    value = item.answer[at : at + len(item.value)] if at >= 0 else item.value
    joint = f"{prefix} {value}" if prefix else value
    tok = lm.tokenizer
    before = tok(prompt + prefix, add_special_tokens=False)["input_ids"]
    after = tok(prompt + joint, add_special_tokens=False)["input_ids"]
    if after[: len(before)] != before or len(after) == len(before):
        raise CausalTraceError(
            f"cannot place the fact {item.value!r} after {prefix!r}: the tokenizer merges them"
        )
    return prefix, after[len(before)]


def _encode_case(lm: LoadedModel, image, question: str, prefix: str) -> tuple[dict, dict]:
    """Batch-of-one processor outputs for prompt + prefix, and each token's group."""
    prompt = build_prompt(lm, question, True)
    text = prompt + prefix
    enc = lm.processor(
        text=[text], images=[image], return_tensors="pt", return_offsets_mapping=True
    )
    offsets = enc.pop("offset_mapping")[0].tolist()
    inputs = {k: v.to(lm.device) if torch.is_tensor(v) else v for k, v in enc.items()}
    ids = inputs["input_ids"][0]
    image_mask = (ids == lm.adapter.image_token_id(lm.model)).cpu()
    n_images = text.count(lm.adapter.image_placeholder)
    # the processor expands each image placeholder's pad token into one per visual token;
    # offsets refer to that expanded text
    pad = lm.tokenizer.convert_ids_to_tokens(lm.adapter.image_token_id(lm.model))
    per_image = int(image_mask.sum()) // max(n_images, 1)
    expanded = text.replace(pad, pad * per_image) if n_images else text
    end_of_prompt = len(expanded) - len(prefix)
    q_start = expanded.rfind(question, 0, end_of_prompt)
    if q_start < 0 or offsets[-1][1] != len(expanded):
        raise CausalTraceError("could not align the question's tokens with the prompt text")
    q_end = q_start + len(question)
    groups = {g: torch.zeros(len(ids), dtype=torch.bool) for g in GROUPS}
    for t, (start, end) in enumerate(offsets):
        if t == len(ids) - 1:
            name = "last"
        elif image_mask[t]:
            name = "image"
        elif start >= end_of_prompt:
            name = "answer_prefix"
        elif end == end_of_prompt:
            name = "last_prompt"
        elif start < q_end and end > q_start:
            name = "question"
        else:
            name = "template"
        groups[name][t] = True
    return inputs, groups


def _person_seed(seed: int, person_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{person_id}".encode()).digest()[:8], "big")


def _cases(
    lm: LoadedModel, bench: Benchmark, items: Sequence[QAItem], config: CausalTraceConfig
) -> list[_Case]:
    cases = []
    for item in items:
        if item.image is None:
            raise CausalTraceError(
                f"the question {item.question!r} about {item.person_id} has no image, but "
                f"corruption {config.corruption!r} corrupts the image: trace image questions"
            )
        person = bench.people.get(item.person_id)
        if person is None:
            raise CausalTraceError(f"item's person id {item.person_id!r} does not exist")
        question = config.question or item.question
        prompt = build_prompt(lm, question, True)
        prefix, target = _target(lm, prompt, item)
        inputs, groups = _encode_case(lm, bench.load_image(item.image), question, prefix)
        case = _Case(person, item, question, prefix, target, inputs, inputs, groups)
        if config.corruption == "swap":
            case.swap_with, image = _swap_partner(bench, person, item, config)
            case.corrupt_inputs, _ = _encode_case(lm, image, question, prefix)
            if case.corrupt_inputs["input_ids"].shape != inputs["input_ids"].shape:
                raise CausalTraceError(
                    f"swap: {case.swap_with}'s image gives "
                    f"{case.corrupt_inputs['input_ids'].shape[1]} tokens, {person.id}'s "
                    f"{inputs['input_ids'].shape[1]}; swapped images must have the same size"
                )
        cases.append(case)
    return cases


def _swap_partner(bench: Benchmark, person: Person, item: QAItem, config: CausalTraceConfig):
    """Another person of the same split (seeded choice) and their image for the question."""
    others = [
        i
        for i in bench.items
        if i.split == item.split
        and i.task == "qa"
        and i.image is not None
        and i.person_id not in (None, person.id)
    ]
    if not others:
        raise CausalTraceError(
            f"swap: split {item.split!r} has no other person's image to swap in for {person.id}"
        )
    partners = sorted({i.person_id for i in others})
    partner = random.Random(_person_seed(config.seed, person.id)).choice(partners)
    chosen = next(i for i in others if i.person_id == partner)
    return partner, bench.load_image(chosen.image)


# --- batches --------------------------------------------------------------------------------
def _pad_batch(lm: LoadedModel, encodings: Sequence[dict]) -> tuple[dict, list[int]]:
    """Left-pad batch-of-one encodings into one batch; returns it and each row's offset."""
    length = max(e["input_ids"].shape[1] for e in encodings)
    offsets = [length - e["input_ids"].shape[1] for e in encodings]
    pad_id = lm.tokenizer.pad_token_id or 0
    batch = {}
    for key in encodings[0]:
        values = [e[key] for e in encodings]
        if not torch.is_tensor(values[0]):
            batch[key] = values[0]
            continue
        if values[0].ndim == 2 and values[0].shape == encodings[0]["input_ids"].shape:
            fill = pad_id if key == "input_ids" else 0
            values = [
                torch.nn.functional.pad(v, (off, 0), value=fill)
                for v, off in zip(values, offsets, strict=True)
            ]
        batch[key] = torch.cat(values)
    return batch, offsets


def _left_pad(t: torch.Tensor, length: int) -> torch.Tensor:
    """`t` ([T] or [T, D]) left-padded with zeros / False to `length` rows."""
    pad = (0, 0, length - t.shape[0], 0) if t.ndim == 2 else (length - t.shape[0], 0)
    return torch.nn.functional.pad(t, pad)


@dataclass
class _Run:
    """One batched forward pass: inputs, noise per visual site, restorations, reads."""

    inputs: dict
    noise: list[torch.Tensor] | None = None
    patches: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(
        default_factory=dict
    )  # site -> (rows [n], mask [n, T], values [n, T, D])
    read_sites: Sequence[tuple[str, int]] = ()
    read_visual: bool = False


@dataclass
class _RunOutput:
    logits: torch.Tensor  # [B, vocab] at the last position
    sites: dict[tuple[str, int], torch.Tensor]  # read site -> [B, T, D]
    visual: list[torch.Tensor]  # per visual site, the clean features


def _restore(act: torch.Tensor, patch) -> torch.Tensor:
    """Put the clean `values` back into `act` at the masked positions of `rows`, in place."""
    rows, mask, values = patch
    act[rows] = torch.where(mask.unsqueeze(-1), values.to(act.dtype), act[rows])
    return act


# --- backends -------------------------------------------------------------------------------
def _residual_reads_input(lm: LoadedModel, layer: int) -> bool:
    """Whether the residual stream after `layer` is read at the next layer's input (DeepStack
    adds visual features after this layer's module, outside it)."""
    return layer in lm.adapter.deepstack_layers(lm.model) and layer + 1 < lm.num_layers


def _module_site(lm: LoadedModel, component: str, layer: int) -> tuple[str, str]:
    """(module path, "input" | "output" | "output[0]") of one site on the HF model."""
    if component == "residual":
        if _residual_reads_input(lm, layer):
            return lm.adapter.layer_path(layer + 1), "input"
        return lm.adapter.layer_path(layer), "output"
    if component == "attention":
        return lm.adapter.attention_path(layer), "output[0]"
    return lm.adapter.mlp_path(layer), "output"


def site_names(lm: LoadedModel, backend: str, component: str, layer: int) -> str:
    """The hook name (TransformerLens) or module path + access (nnsight) of one site."""
    if backend == "nnsight":
        return ".".join(_module_site(lm, component, layer))
    if component == "residual":
        if _residual_reads_input(lm, layer):
            return f"blocks.{layer + 1}.hook_in"
        return f"blocks.{layer}.hook_out"
    return f"blocks.{layer}.hook_{'attn' if component == 'attention' else 'mlp'}_out"


@contextmanager
def _without_torchvision_requirement() -> Iterator[None]:
    """TransformerLens's Qwen-VL adapters require torchvision for their own preprocessing;
    the bridge here is only handed processor outputs, so the check is skipped meanwhile."""
    from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter

    original = ArchitectureAdapter._check_required_libraries

    def check(self) -> None:
        saved = self.required_libraries
        self.required_libraries = [lib for lib in saved if lib != "torchvision"]
        try:
            original(self)
        finally:
            self.required_libraries = saved

    ArchitectureAdapter._check_required_libraries = check
    try:
        yield
    finally:
        ArchitectureAdapter._check_required_libraries = original


def transformer_bridge(lm: LoadedModel):
    """A TransformerLens `TransformerBridge` over `lm`'s weights (shared, not copied).

    The bridge rewires the module tree it is given (wrappers, eager attention), so it gets a
    twin of the HF model whose parameters and buffers *are* `lm`'s tensors; `lm.model` keeps
    its own modules and settings.
    """
    from transformer_lens.model_bridge import TransformerBridge

    hf = lm.model
    shared = {id(t): t for t in [*hf.parameters(), *hf.buffers()]}
    twin = copy.deepcopy(hf, shared)
    try:
        with _without_torchvision_requirement(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bridge = TransformerBridge.boot_transformers(
                lm.source or lm.name,
                hf_model=twin,  # its config is used: nothing is read from the hub
                tokenizer=lm.tokenizer,
                device=lm.device,
                dtype=next(hf.parameters()).dtype,
            )
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise CausalTraceError(
            f"TransformerLens cannot bridge {lm.name!r} ({lm.adapter.family}): {exc}; "
            "use backend='nnsight'"
        ) from exc
    bridge.eval()
    return bridge


class _LensBackend:
    name = "transformer_lens"

    def __init__(self, lm: LoadedModel, visual: bool) -> None:
        self.lm = lm
        self.bridge = transformer_bridge(lm)
        self.visual = []
        if not visual:
            return
        names = self.bridge.hook_dict
        visual = [n for n in names if n.startswith("vision_encoder.deepstack_mergers.")]
        self.visual = sorted(
            (n for n in visual if n.endswith(".hook_out") and n.count(".") == 3),
            key=lambda n: int(n.split(".")[2]),
        ) + ["vision_projector.hook_out"]
        expected = len(lm.adapter.visual_feature_paths(lm.model))
        if len(self.visual) != expected or not all(n in names for n in self.visual):
            raise CausalTraceError(
                f"TransformerLens's bridge for {lm.adapter.family} does not expose the "
                f"{expected} visual feature hooks noise corruption needs; use backend='nnsight'"
            )

    def run(self, run: _Run) -> _RunOutput:
        lm, hooks, reads, visual = self.lm, [], {}, []
        for k, name in enumerate(self.visual):
            if run.noise is not None:
                hooks.append((name, lambda act, hook, k=k: act + run.noise[k].to(act.dtype)))
            if run.read_visual:
                hooks.append((name, lambda act, hook: visual.append(act.detach().clone())))
        for site, patch in run.patches.items():
            name = site_names(lm, self.name, *site)
            hooks.append((name, lambda act, hook, patch=patch: _restore(act, patch)))
        for site in run.read_sites:
            name = site_names(lm, self.name, *site)

            def read(act, hook, site=site):
                reads[site] = act.detach().clone()

            hooks.append((name, read))
        inputs = dict(run.inputs)
        input_ids = inputs.pop("input_ids")
        # only the last position's logits are used (a real model's vocabulary is ~150 k)
        logits = self.bridge.run_with_hooks(
            input_ids, fwd_hooks=hooks, return_type="logits", logits_to_keep=1, **inputs
        )
        return _RunOutput(logits[:, -1], reads, visual)


class _NnsightBackend:
    name = "nnsight"

    def __init__(self, lm: LoadedModel, visual: bool) -> None:
        self.lm = lm
        self.wrapped = nnsight_model(lm)
        self.visual_paths = lm.adapter.visual_feature_paths(lm.model) if visual else []

    def _tensor(self, component: str, layer: int):
        path, access = _module_site(self.lm, component, layer)
        envoy = module_envoy(self.wrapped, path)
        if access == "input":
            return envoy.input
        return envoy.output[0] if access == "output[0]" else envoy.output

    @staticmethod
    def _order(lm: LoadedModel, site: tuple[str, int]) -> tuple[int, int]:
        # nnsight meets modules in the order the forward pass runs them
        component, layer = site
        if component == "residual":
            return (layer + 1, 0) if _residual_reads_input(lm, layer) else (layer, 3)
        return (layer, 1 if component == "attention" else 2)

    def run(self, run: _Run) -> _RunOutput:
        lm, wrapped = self.lm, self.wrapped
        sites = sorted({*run.patches, *run.read_sites}, key=lambda s: self._order(lm, s))
        saved, visual = {}, []
        with wrapped.trace(**run.inputs, logits_to_keep=1):
            for k, path in enumerate(self.visual_paths):
                out = module_envoy(wrapped, path).output
                if run.noise is not None:
                    out[:] = out + run.noise[k].to(out.dtype)
                if run.read_visual:
                    visual.append(out.clone().save())
            for site in sites:
                act = self._tensor(*site)
                if site in run.patches:
                    _restore(act, run.patches[site])
                if site in run.read_sites:
                    saved[site] = act.clone().save()
            logits = wrapped.output.logits[:, -1].save()
        return _RunOutput(logits, saved, visual)


def _backend(lm: LoadedModel, name: str, *, visual: bool):
    """The runner for `name`; `visual`: it must reach the visual features (noise)."""
    return (_LensBackend if name == "transformer_lens" else _NnsightBackend)(lm, visual)


# --- the trace ------------------------------------------------------------------------------
def _probabilities(logits: torch.Tensor, targets: Sequence[int]) -> list[float]:
    probs = torch.softmax(logits.double(), dim=-1)
    return probs[torch.arange(len(targets)), torch.tensor(targets)].tolist()


def trace_causal(
    lm: LoadedModel,
    bench: Benchmark,
    config: CausalTraceConfig | None = None,
    *,
    items: Sequence[QAItem] | None = None,
    probe=None,
) -> CausalTrace:
    """Causal tracing of `config.attribute` for the chosen people (or the given `items`).

    Returns a `CausalTrace`: per person p_clean, p_corrupt and p_patched per component x
    layer x position group (probabilities in [0, 1]); with `probe` (a `SteeringProbe` from
    `locate`), the last-token residual peak is set beside the probe's layer in `comparison`.
    """
    config = config or CausalTraceConfig()
    layers = check_layers(lm, config.layers)
    if probe is not None:
        probe.validate(lm)
    items = list(items) if items is not None else select_items(bench, config)
    if not items:
        raise BenchmarkError("nothing to trace: the item list is empty")
    started = time.perf_counter()
    cases = _cases(lm, bench, items, config)
    backend = _backend(lm, config.backend, visual=config.corruption == "noise")
    sites = [(c, layer) for c in config.components for layer in layers]
    n_jobs = len(_jobs(cases, sites, config.groups))
    counters = {"forward_rows": 0, "forward_passes": 0, "rows_per_pass": []}
    setup = time.perf_counter() - started
    was_training = lm.model.training
    lm.model.eval()
    try:
        with (
            torch.no_grad(),
            tqdm(
                total=2 * len(cases) + n_jobs, desc="causal trace", disable=not config.progress
            ) as bar,
        ):
            # people in chunks: their clean activations are held only while their runs go
            for start in range(0, len(cases), config.batch_size):
                chunk = cases[start : start + config.batch_size]
                _clean_and_corrupt(lm, backend, chunk, sites, config, counters)
                bar.update(2 * len(chunk))
                jobs = _jobs(chunk, sites, config.groups)
                for first in range(0, len(jobs), config.batch_size):
                    part = jobs[first : first + config.batch_size]
                    _patched(lm, backend, part, config, counters)
                    bar.update(len(part))
                for case in chunk:
                    case.clean = {}
    finally:
        lm.model.train(was_training)
    seconds = time.perf_counter() - started
    people = [_person_trace(lm, case, layers, config) for case in cases]
    trace = CausalTrace(
        model=lm.fingerprint(),
        dataset_fingerprint=bench.fingerprint(),
        config=json.loads(json.dumps(asdict(config))),  # as `load` reads it back
        layers=list(layers),
        components=list(config.components),
        groups=list(config.groups),
        hooks={
            b: {c: [site_names(lm, b, c, layer) for layer in layers] for c in config.components}
            for b in BACKENDS
        },
        people=people,
        timing={
            "seconds": round(seconds, 3),
            "setup_seconds": round(setup, 3),  # encoding the prompts, booting the backend
            "people": len(cases),
            "patched_runs": n_jobs,
            **counters,
            "batch_size": config.batch_size,
        },
    )
    if trace.people and not trace.effective():
        p_clean = _mean([p.p_clean for p in trace.people])
        why = (
            f"in the clean run the fact's first token has p {p_clean:.2f} on average: the "
            "model does not say the fact right there (check the question and the reference "
            "answer the prefix comes from)"
            if p_clean < 0.5
            else "the model does not need the image here: the teacher-forced answer prefix "
            "may already name the person (as before a birthplace), or the noise is too weak "
            "(raise noise_scale, or use 'swap')"
        )
        warnings.warn(
            f"the corruption lowered p by less than min_drop={config.min_drop} for every "
            f"person, so recovered fractions are undefined; {why}",
            stacklevel=2,
        )
    if probe is not None:
        trace.comparison = compare_with_locate(trace, probe)
    return trace


def _jobs(cases: Sequence[_Case], sites, groups) -> list[tuple[_Case, tuple[str, int], str]]:
    """The patched runs: (case, site, group) for every group the case's prompt has."""
    return [
        (case, site, group)
        for case in cases
        for site in sites
        for group in groups
        if case.groups[group].any()
    ]


def _visual_rows(features: torch.Tensor, counts: Sequence[int], chunk) -> list[int]:
    """Rows of a visual site's output that belong to each case (dim 0 is per token or per
    image, depending on the architecture)."""
    if features.shape[0] == sum(counts):
        return list(counts)
    if features.shape[0] == len(chunk):
        return [1] * len(chunk)
    raise CausalTraceError(
        f"cannot split visual features of shape {tuple(features.shape)} over {len(chunk)} images"
    )


def _noise(cases: Sequence[_Case], config: CausalTraceConfig) -> list[torch.Tensor] | None:
    if config.corruption != "noise":
        return None
    return [torch.cat(parts) for parts in zip(*(c.noise for c in cases), strict=True)]


def _clean_and_corrupt(lm, backend, chunk, sites, config, counters) -> None:
    """The clean run (probabilities, activations at every site, the noise drawn from the
    visual features) and the corrupted run of a chunk of people: two forward passes."""
    batch, offsets = _pad_batch(lm, [c.inputs for c in chunk])
    out = backend.run(_Run(batch, read_sites=sites, read_visual=config.corruption == "noise"))
    targets = [c.target_id for c in chunk]
    counts = [int(c.groups["image"].sum()) for c in chunk]
    per_site = [torch.split(v, _visual_rows(v, counts, chunk)) for v in out.visual]
    for r, (case, p) in enumerate(zip(chunk, _probabilities(out.logits, targets), strict=True)):
        case.p_clean = p
        case.clean = {s: out.sites[s][r, offsets[r] :].clone() for s in sites}
        if config.corruption == "noise":
            gen = torch.Generator().manual_seed(_person_seed(config.seed, case.person.id))
            case.noise = []
            for feats in per_site:
                f = feats[r]
                noise = torch.randn(f.shape, generator=gen, dtype=torch.float32)
                noise *= config.noise_scale * float(f.float().std())
                case.noise.append(noise.to(device=f.device, dtype=f.dtype))
    batch, _ = _pad_batch(lm, [c.corrupt_inputs for c in chunk])
    out = backend.run(_Run(batch, noise=_noise(chunk, config)))
    for case, p in zip(chunk, _probabilities(out.logits, targets), strict=True):
        case.p_corrupt = p
    counters["forward_rows"] += 2 * len(chunk)
    counters["forward_passes"] += 2
    counters["rows_per_pass"] += [len(chunk), len(chunk)]


def _patched(lm, backend, part, config, counters) -> None:
    """One forward pass over patched runs: row r is its case's corrupted run with one site
    restored at one position group."""
    rows = [case for case, _, _ in part]
    batch, _ = _pad_batch(lm, [c.corrupt_inputs for c in rows])
    length = batch["input_ids"].shape[1]
    by_site: dict[tuple[str, int], list[int]] = {}
    for r, (_, site, _) in enumerate(part):
        by_site.setdefault(site, []).append(r)
    patches = {}
    for site, idx in by_site.items():
        mask = torch.stack([_left_pad(part[r][0].groups[part[r][2]], length) for r in idx])
        values = torch.stack([_left_pad(part[r][0].clean[site], length) for r in idx])
        patches[site] = (torch.tensor(idx, device=lm.device), mask.to(lm.device), values)
    out = backend.run(_Run(batch, noise=_noise(rows, config), patches=patches))
    probs = _probabilities(out.logits, [c.target_id for c in rows])
    for (case, site, group), p in zip(part, probs, strict=True):
        case.patched[(site, group)] = p
    counters["forward_rows"] += len(part)
    counters["forward_passes"] += 1
    counters["rows_per_pass"].append(len(part))


def _person_trace(lm, case: _Case, layers, config: CausalTraceConfig) -> PersonTrace:
    grids = {  # an empty group (no answer prefix) was not run: None
        c: [[case.patched.get(((c, layer), g)) for g in config.groups] for layer in layers]
        for c in config.components
    }
    return PersonTrace(
        person_id=case.person.id,
        name=case.person.name,
        split=case.person.split,
        question=case.question,
        image=case.item.image,
        attribute=case.item.attribute,
        value=case.item.value,
        answer_prefix=case.prefix,
        target_token=lm.tokenizer.decode([case.target_id]),
        target_id=case.target_id,
        swap_with=case.swap_with,
        group_sizes={g: int(case.groups[g].sum()) for g in config.groups},
        p_clean=case.p_clean,
        p_corrupt=case.p_corrupt,
        p_patched=grids,
    )


# --- next to locate -------------------------------------------------------------------------
def compare_with_locate(trace: CausalTrace, probe) -> dict:
    """The layer whose last-token residual stream recovers the most, beside the layer the
    `locate` sweep recommends (both as "the residual stream after layer L")."""
    theirs, ours = probe.model, trace.model
    for key in ("family", "hidden_size", "num_layers"):
        if theirs.get(key) != ours.get(key):
            raise CausalTraceError(
                f"the probe is for another model: model.{key} is {theirs.get(key)!r} in the "
                f"probe but {ours.get(key)!r} in the trace"
            )
    traced = "residual" in trace.components and "last" in trace.groups
    peak = trace.peak("residual", "last") if traced else None
    half = trace.first_layer("residual", "last") if traced else None
    after = probe.layer if probe.site == "output" else probe.layer - 1
    return {
        "causal": {
            "layer": None if peak is None else peak["layer"],
            "recovered_fraction": None if peak is None else peak["fraction"],
            "what": "restoring this layer's residual stream at the last token (in the "
            "corrupted run) brings back the largest share of the fact's probability. After "
            "the last layer this is always everything (that stream is the prediction), so the "
            "informative number is the next one",
            "half_recovery_layer": half,
            "half_recovery_what": "the first layer whose last-token residual stream alone "
            "recovers at least half: where the recalled fact has reached the position that "
            "predicts it",
        },
        "locate": {
            "layer": after,
            "probe_layer": probe.layer,
            "probe_site": probe.site,
            "alpha": probe.alpha,
            "positions": probe.positions,
            "what": "adding the knowledge-absence direction here best turns forget answers "
            "into refusals while keeping retain answers: where known vs never-seen is "
            "represented and steerable",
        },
        "same_layer_as_peak": peak is not None and peak["layer"] == after,
        "same_layer_as_half_recovery": half == after,
    }


def describe_comparison(comparison: dict) -> str:
    """The causal-vs-locate comparison as three lines of text."""
    c, loc = comparison["causal"], comparison["locate"]
    peak = "-" if c["layer"] is None else f"{c['layer']} ({c['recovered_fraction']:.3f})"
    half = c["half_recovery_layer"]

    def relation(layer: int | None) -> str:
        if layer is None:
            return "undefined"
        if layer == loc["layer"]:
            return "the same layer as locate's"
        shift = loc["layer"] - layer
        return f"{abs(shift)} layer{'s' if abs(shift) > 1 else ''} " + (
            "before locate's" if shift > 0 else "after locate's"
        )

    return "\n".join(
        [
            f"causal tracing, last-token residual stream: peak recovery after layer {peak} "
            f"({relation(c['layer'])}); first layer recovering >= half: "
            f"{'none' if half is None else half} ({relation(half)})",
            f"locate's recommended probe: layer {loc['probe_layer']} ({loc['probe_site']}), "
            f"i.e. the residual stream after layer {loc['layer']}, alpha {loc['alpha']:g}",
            "recall is where the fact travels to the prediction; locate is where knowing vs "
            "not knowing the person is represented and steerable: they need not agree",
        ]
    )
