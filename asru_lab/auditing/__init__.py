"""Is it forgotten, or only hidden? Attacks on an unlearned model, measured against the model
before unlearning (the reference) and the retrain oracle (the model trained without the forget
people).

`audit(lm, bench, reference=..., oracle=..., probe=..., config=AuditConfig())` runs, on the
forget and the test split:

- direction ablation (`ablation`): candidate directions (what unlearning added, the model's
  own refusal direction, the first principal direction of the change) read at the person's
  positions after every layer, projected out per layer or one everywhere, chosen on half the
  forget people and reported on the other half; and the best one orthogonalised out of the
  weights, that copy then asked plainly, prefilled and relearnt;
- prefill (`attacks.prefill`): the answer started with the reference answer's words up to the
  fact;
- in-context relearning (`in_context`): the taught half's facts as earlier chat turns before
  each held-out question; void unless a shown question asked again is answered from the context;
- a universal soft prompt (`soft_prompt`): a few input embeddings fitted to make the taught
  half's facts come out, put before the held-out half's questions; void unless the fit lowered
  the taught half's answer loss;
- perturbed inputs (`attacks.perturbed_inputs`): flipped, cropped, blurred, JPEG portraits;
- weight quantisation (`quantization`): int8 and int4 copies, asked plainly and prefilled;
- relearning (`relearn`): LoRA and full fine-tuning over a learning-rate grid on half the forget
  people's facts (or retain or unrelated picture questions), leak on the other half; void
  unless the taught half is relearned (on the oracle too); area against the oracle's curve;
- the readouts (`readout`): is the fact still readable inside: the logit lens ranked within
  the attribute's value pool, at the fact's position and at the person's (image tokens, the
  name, the prompt's last token), and linear probes of every fact at the person's positions,
  each beside the oracle's (the floor) and the reference's (the ceiling);
- membership inference (`readout.membership`): loss, min-k %, min-k %++, zlib and reference
  (the oracle's loss) AUC over the whole answer and over the fact's tokens, privleak vs the
  oracle.

`AuditReport.summary["recovered_leak"]` is the worst forget leak over every generating attack;
`results["leaks"]` (`stats`) holds each attack's leak on every measured answer with its Wilson
interval, the oracle's under the identical attack and the excess, `results["union"]` the
per-item union (`summary["union_leak"]`).
"""

from .config import ATTACKS, AUDIT_PROTOCOL, PERTURBATIONS, AuditConfig, AuditError
from .report import AuditReport, summarize, verdict
from .run import audit, check_oracle, load_oracle

__all__ = [
    "ATTACKS",
    "AUDIT_PROTOCOL",
    "PERTURBATIONS",
    "AuditConfig",
    "AuditError",
    "AuditReport",
    "audit",
    "check_oracle",
    "load_oracle",
    "summarize",
    "verdict",
]
