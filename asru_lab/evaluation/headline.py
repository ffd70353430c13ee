"""The paper's two headline numbers, computed from evaluation reports, and ASRU's ratios.

- **UE**, unlearning effectiveness: the mean over the forget and test splits of
  `1 - leak / leak_vanilla` and `1 - (mcq - 0.25) / (mcq_vanilla - 0.25)`, each clipped to
  [0, 1] (1: nothing of the forget people is left; 0: as much as before; 0.25 is MCQ chance).
- **GQ**, generation quality: the forget split's contextual-refusal score (0-5).

Under every evaluation protocol UE reads `leak_rate` and `mcq_acc` of forget and test: the
`mllmu` and `asru_paper` protocols report no `leak_rate`, so there UE is the MCQ term alone, and
the MCQ term is left out whenever the vanilla accuracy is at or below chance (0.25: no drop to
measure, and no division by a vanilla accuracy at or below chance); with no term left, or no
judge's quality block for GQ (`mllmu`), they raise HeadlineError saying why.
- **retain accuracy** (what the tuning rule keeps and the trade-off figure plots): the mean of
  retain recall (`leak_rate` on retain) and retain MCQ accuracy, those the evaluation has.
- ASRU over a baseline: UE as a relative gain in % (`100 * (UE_asru / UE_base - 1)`), GQ as a
  factor `GQ_asru / max(GQ_base, 0.1)`.

The inputs are `EvalReport.splits`-shaped dicts (split -> metrics); rows carry "method",
"forget_ratio", "ue" and "gq" (None where the evaluation cannot give them).
"""

from __future__ import annotations

import math

from asru_lab.errors import AsruLabError

HEADLINE_BASELINES = ("ga", "grad_diff", "kl_min", "npo", "mmunlearner")  # the paper's comparison
MCQ_CHANCE = 0.25
GQ_FLOOR = 0.1
DEFINITIONS = {
    "ue": "mean over forget and test of clip(1 - leak/leak_vanilla) and "
    f"clip(1 - (mcq - {MCQ_CHANCE})/(mcq_vanilla - {MCQ_CHANCE}))",
    "gq": "forget quality.contextual_refusal (0-5)",
    "ue_gain_pct": "100 * (UE_asru / UE_baseline - 1)",
    "gq_factor": f"GQ_asru / max(GQ_baseline, {GQ_FLOOR})",
}


class HeadlineError(AsruLabError, ValueError):
    """A headline number cannot be computed from these evaluations."""


def unlearning_effectiveness(splits: dict, vanilla: dict) -> float:
    """UE in [0, 1] (module docstring): 1 - leak/leak_vanilla and the chance-corrected MCQ
    drop, each clipped to [0, 1], averaged over the forget and test splits present."""
    terms = []
    for split in ("forget", "test"):
        now, before = splits.get(split), vanilla.get(split)
        if not now or not before:
            continue
        if before.get("leak_rate") and "leak_rate" in now:
            terms.append(_clip(1 - now["leak_rate"] / before["leak_rate"]))
        if "mcq_acc" in now and before.get("mcq_acc", 0) > MCQ_CHANCE:
            drop = (now["mcq_acc"] - MCQ_CHANCE) / (before["mcq_acc"] - MCQ_CHANCE)
            terms.append(_clip(1 - drop))
    if not terms:
        if not any("leak_rate" in (vanilla.get(split) or {}) for split in ("forget", "test")):
            raise HeadlineError(
                "cannot compute UE: this evaluation protocol reports no leak_rate (mllmu and "
                "asru_paper score generation by ROUGE and BLEU) and the vanilla model's MCQ "
                f"accuracy on forget and test is at or below chance ({MCQ_CHANCE}), so neither "
                "term of UE applies; evaluate with protocol asru_lab, or a model that answers "
                "the protocol's multiple-choice prompts above chance"
            )
        raise HeadlineError(
            "cannot compute UE: the vanilla model leaks nothing and is at chance on the forget "
            "and test splits, so there is nothing to unlearn"
        )
    return sum(terms) / len(terms)


def retain_accuracy(retain: dict) -> float | None:
    """Retain accuracy (module docstring) from the retain split's metrics; None when they hold
    neither retain recall nor retain MCQ accuracy."""
    values = [retain.get(k) for k in ("leak_rate", "mcq_acc")]
    values = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    return sum(values) / len(values) if values else None


def generation_quality(splits: dict) -> float:
    """GQ: the forget split's contextual-refusal score (0-5); HeadlineError when the forget
    split has no judge's quality block (protocol mllmu does not judge)."""
    quality = (splits.get("forget") or {}).get("quality")
    if quality is None:
        raise HeadlineError(
            "cannot compute GQ: the forget split has no judge's quality block (protocol mllmu "
            "does not judge generation answers); evaluate with protocol asru_lab or asru_paper"
        )
    return float(quality["contextual_refusal"])


def _clip(x: float) -> float:
    return min(1.0, max(0.0, x))


def headline(rows: list[dict]) -> list[dict]:
    """Per forget ratio and baseline: UE and GQ of both, ASRU's UE gain (%) and GQ factor."""
    out = []
    for ratio in sorted({r["forget_ratio"] for r in rows}):
        at = {r["method"]: r for r in rows if r["forget_ratio"] == ratio}
        if "asru" not in at:
            continue
        asru = at["asru"]
        for base in HEADLINE_BASELINES:
            if base not in at:
                continue
            b = at[base]
            if asru["ue"] is None or b["ue"] is None:
                gain = None  # a protocol or model that cannot give UE (reproduce warns)
            else:
                gain = 100 * (asru["ue"] / b["ue"] - 1) if b["ue"] > 0 else math.inf
            no_gq = asru["gq"] is None or b["gq"] is None
            out.append(
                {
                    "forget_ratio": ratio,
                    "baseline": base,
                    "ue_baseline": b["ue"],
                    "ue_asru": asru["ue"],
                    "ue_gain_pct": gain,
                    "gq_baseline": b["gq"],
                    "gq_asru": asru["gq"],
                    "gq_factor": None if no_gq else asru["gq"] / max(b["gq"], GQ_FLOOR),
                }
            )
    return out
