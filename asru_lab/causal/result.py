"""What a causal trace measured: `PersonTrace` (one person's probabilities) and `CausalTrace`
(every person's, with the layer x group matrices, peaks and summary read from them; saved and
loaded as one JSON file)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from asru_lab.artifacts import claim_output, write_json_atomic
from asru_lab.causal.config import CausalTraceError

FORMAT = "asru_lab.causal_trace"
FORMAT_VERSION = 1
TRACE_FILE = "trace.json"
PEAK_TIE = 1e-3  # recovered fractions this close to the maximum tie (see CausalTrace.peak)


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
