"""The paper's two headline numbers, computed from evaluation reports, and ASRU's ratios.

- **UE**, unlearning effectiveness: the mean over the forget and test splits of
  `1 - leak / leak_vanilla` and `1 - (mcq - 0.25) / (mcq_vanilla - 0.25)`, each clipped to
  [0, 1] (1: nothing of the forget people is left; 0: as much as before; 0.25 is MCQ chance).
- **GQ**, generation quality: the forget split's contextual-refusal score (0-5).
- ASRU over a baseline: UE as a relative gain in % (`100 * (UE_asru / UE_base - 1)`), GQ as a
  factor `GQ_asru / max(GQ_base, 0.1)`.

The inputs are `EvalReport.splits`-shaped dicts (split -> metrics); rows carry "method",
"forget_ratio", "ue" and "gq".
"""

from __future__ import annotations

import math

from asru_lab.errors import AsruLabError

HEADLINE_BASELINES = ("ga", "grad_diff", "kl_min", "npo")  # the paper's comparison
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
        raise HeadlineError(
            "cannot compute UE: the vanilla model leaks nothing and is at chance on the forget "
            "and test splits, so there is nothing to unlearn"
        )
    return sum(terms) / len(terms)


def generation_quality(splits: dict) -> float:
    """GQ: the forget split's contextual-refusal score (0-5)."""
    return float(splits["forget"]["quality"]["contextual_refusal"])


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
            gain = 100 * (asru["ue"] / b["ue"] - 1) if b["ue"] > 0 else math.inf
            out.append(
                {
                    "forget_ratio": ratio,
                    "baseline": base,
                    "ue_baseline": b["ue"],
                    "ue_asru": asru["ue"],
                    "ue_gain_pct": gain,
                    "gq_baseline": b["gq"],
                    "gq_asru": asru["gq"],
                    "gq_factor": asru["gq"] / max(b["gq"], GQ_FLOOR),
                }
            )
    return out
