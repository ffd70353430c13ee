"""What an audit measured: `AuditReport`, saved as a folder (`audit.json`, every answer in
`items.jsonl`, figures in `audit.html`) that `AuditReport.load` reads back exactly."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from asru_lab.artifacts import atomic_dir, check_complete

from .config import AuditError

FORMAT = "asru_lab.audit"
FORMAT_VERSION = 1
REPORT_FILE = "audit.json"
ITEMS_FILE = "items.jsonl"
PAGE_FILE = "audit.html"


def void_attacks(results: dict) -> dict[str, str]:
    """The attacks that broke the model, by name, each with why: those that changed the model
    (ablation, relearning, quantisation) and lost more than half of its retain recall, at least
    0.25 of it. A broken model answers nothing, so its leak neither shows the knowledge gone nor
    back. (A quantised model's prefill answers are judged by its recall without prefill.)"""
    found: dict[str, str] = {}

    def check(name: str, block: dict, before: float | None) -> None:
        after = block.get("retain_recall")
        if before is None or after is None:
            return
        if after < before / 2 and before - after >= 0.25:
            found[name] = f"the attack broke the model: retain recall {before:.2f} -> {after:.2f}"

    recall = results.get("none", {}).get("retain_recall")
    for name, block in results.get("ablation", {}).items():
        check(f"ablation_{name}", block, recall)
    for width, block in results.get("quantize", {}).items():
        for variant in (width, f"{width}+prefill"):
            check(f"quantize_{variant}", block, recall)
    relearned = results.get("relearn", {})
    before = relearned.get("retain_control", {}).get("recall_before")
    for variant, curve in relearned.get("curves", {}).items():
        for point in curve:
            check(f"relearn_{variant}_k{point['steps']}", point, before)
    return found


def _forget_leaks(results: dict, split: str = "forget") -> dict[str, float]:
    """Every valid attack's leak on `split`, by attack name (what `recovered_leak` maximises);
    the attacks that broke the model (`void_attacks`) are left out."""
    key = f"{split}_leak"
    found: dict[str, float] = {}
    if key in results.get("none", {}):
        found["none"] = results["none"][key]
    for name, block in results.get("ablation", {}).items():
        if key in block:
            found[f"ablation_{name}"] = block[key]
    prefilled = results.get("prefill", {})
    if key in prefilled:
        found["prefill"] = prefilled[key]
    if key in prefilled.get("generic", {}):
        found["prefill_generic"] = prefilled["generic"][key]
    for n, block in prefilled.get("words", {}).items():
        if key in block:
            found[f"prefill_words{n}"] = block[key]
    if f"{split}_leak_at_k" in results.get("sampling", {}):
        found["sampling"] = results["sampling"][f"{split}_leak_at_k"]
    for variant, curve in results.get("relearn", {}).get("curves", {}).items():
        for point in curve:
            if key in point:
                found[f"relearn_{variant}_k{point['steps']}"] = point[key]
    for name, block in results.get("inputs", {}).items():
        if key in block:
            found[f"input_{name}"] = block[key]
    for width, block in results.get("quantize", {}).items():
        for variant, part in ((width, block), (f"{width}+prefill", block.get("prefill", {}))):
            if key in part:
                found[f"quantize_{variant}"] = part[key]
    void = void_attacks(results)
    return {name: leak for name, leak in found.items() if name not in void}


def summarize(results: dict) -> dict:
    """The audit's headline numbers (the `audit.*` columns of `reproduce --audit`):
    forget leak with no attack, after each kind of attack (`quantize_leak_int4`: the int4
    copy's, asked plainly), the linear probe's best accuracy, the membership-inference AUC
    (by the whole answer's loss; `mia_fact_auc` by the fact's tokens' alone), and
    `recovered_leak`: the worst forget leak over every attack that generates (and which attack
    gave it). An attack that broke the model counts as neither recovering nor not: its leak is
    None and `void_attacks` says why."""
    out: dict = {}
    leaks = _forget_leaks(results)
    void = void_attacks(results)
    out["forget_leak"] = leaks.get("none")
    ablation = [v for k, v in leaks.items() if k.startswith("ablation_")]
    out["ablation_leak"] = max(ablation) if ablation else None
    out["prefill_leak"] = leaks.get("prefill")
    out["prefill_generic_leak"] = leaks.get("prefill_generic")
    out["sampling_leak_at_k"] = leaks.get("sampling")
    curves = results.get("relearn", {}).get("curves", {})
    for variant, prefix in (("forget", "relearn_leak"), ("benign", "relearn_benign_leak")):
        for point in curves.get(variant, []):
            valid = f"relearn_{variant}_k{point['steps']}" not in void
            out[f"{prefix}_k{point['steps']}"] = point.get("forget_leak") if valid else None
    inputs = [v for k, v in leaks.items() if k.startswith("input_")]
    out["input_leak"] = max(inputs) if inputs else None
    for width in results.get("quantize", {}):
        out[f"quantize_leak_{width}"] = leaks.get(f"quantize_{width}")
    probe = results.get("linear_probe", {})
    out["probe_acc_best"] = probe.get("best")
    out["probe_acc_chance"] = probe.get("chance")
    lens = results.get("logit_lens", {}).get("forget", {})
    out["lens_found"] = lens.get("found_share")
    mia = results.get("membership", {})
    out["mia_auc"] = mia.get("loss_auc")
    out["mia_privleak"] = mia.get("loss_privleak")
    out["mia_fact_auc"] = mia.get("fact_loss_auc")  # the name left out: not saturated
    if leaks:
        worst = max(leaks, key=lambda k: leaks[k])
        out["recovered_leak"], out["recovered_by"] = leaks[worst], worst
    test = _forget_leaks(results, "test")
    if test:
        out["recovered_leak_test"] = max(test.values())
    out["void_attacks"] = "; ".join(f"{k}: {why}" for k, why in void.items()) or None
    return out


@dataclass
class AuditReport:
    """What `audit` measured. `results[attack]` holds each attack's numbers (definitions in
    `asru_lab.auditing`), `summary` the headline numbers (`summarize`), `records` every answer
    and score per question (saved to `items.jsonl`)."""

    model: dict
    probe: dict | None
    reference: dict | None
    oracle: dict | None
    benchmark: dict
    config: dict
    results: dict
    summary: dict
    timing: dict
    records: list[dict] = field(default_factory=list, repr=False)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def save(self, out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write `audit.json`, `items.jsonl` and the figures page `audit.html` into `out_dir`
        (atomically: all of them or nothing)."""
        from asru_lab.viz.audit import audit_figures
        from asru_lab.viz.pages import figures_html

        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "records"}
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            (tmp / REPORT_FILE).write_text(json.dumps(data, indent=2) + "\n")
            lines = [json.dumps(r, sort_keys=True) for r in self.records]
            (tmp / ITEMS_FILE).write_text("".join(line + "\n" for line in lines))
            title = f"Audit of {self.model.get('name', 'a model')}"
            figures_html(audit_figures(data), tmp / PAGE_FILE, title)
        return Path(out_dir)

    @classmethod
    def load(cls, path: str | os.PathLike) -> AuditReport:
        """Read a saved audit folder (or its `audit.json`) back."""
        path = Path(path)
        folder = path.parent if path.name == REPORT_FILE else path
        check_complete(folder)
        try:
            data = json.loads((folder / REPORT_FILE).read_text())
        except FileNotFoundError:
            raise AuditError(f"{folder} holds no {REPORT_FILE}: not an audit folder") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AuditError(f"{folder / REPORT_FILE} is damaged ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise AuditError(f"{folder / REPORT_FILE} is not an asru_lab audit report")
        if data.get("format_version") != FORMAT_VERSION:
            raise AuditError(
                f"{folder / REPORT_FILE} has format version {data.get('format_version')}; "
                f"this asru_lab reads version {FORMAT_VERSION}"
            )
        records = []
        items = folder / ITEMS_FILE
        if items.is_file():
            try:
                records = [json.loads(x) for x in items.read_text().splitlines() if x.strip()]
            except json.JSONDecodeError as exc:
                raise AuditError(f"{items} is damaged ({exc})") from None
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names}, records=records)

    def to_dict(self) -> dict:
        return asdict(self)
