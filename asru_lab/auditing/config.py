"""What an audit measures and how: `AuditConfig`, and `AuditError` for what it refuses."""

from __future__ import annotations

from dataclasses import dataclass, field

from asru_lab.errors import AsruLabError
from asru_lab.validation import ConfigError, check_choices, check_fields

ATTACKS = (
    "ablation",
    "prefill",
    "relearn",
    "linear_probe",
    "logit_lens",
    "membership",
    "inputs",
    "quantize",
    "sampling",
    "in_context",
    "soft_prompt",
    "mcq_likelihood",
)
PERTURBATIONS = ("flip", "crop", "blur", "jpeg")
# direction ablation (`ablation`): the kinds of candidate direction and where they are read
ABLATION_KINDS = ("reference", "refusal", "pc1")
ABLATION_POSITIONS = ("last_prompt", "image", "name")
QUANT_BITS = (4, 8)  # the weight widths the quantisation attack rounds to
RELEARN_MODES = ("lora", "full")  # relearning: a LoRA on the LM's linears, or every parameter
# relearning: what the copy is fine-tuned on (`relearn.teaching_data`); "forget" carries the
# control (the taught half's leak), so every audit that relearns teaches it
RELEARN_DATA = ("forget", "benign", "unrelated")
# The longest relearning curve. Examples repeat, so the taught half's size bounds nothing; the
# attack's budget does: 1000 steps of 8 are about 30 passes over the taught half at forget
# ratio 0.1 (the literature relearns for a few: Łucki et al. 2024 3 epochs) and 5 % of the
# examples that built the embedded model. Longer is retraining, not relearning.
RELEARN_MAX_STEPS = 1000

# relearning checkpoints its activations by default from this many parameters (a 2B model's
# step without it was killed at 21.9 GiB on a 24 GiB machine)
CHECKPOINT_FROM = 1e9

# The version of what the attacks measure, in every cached audit's key (`asru-lab reproduce`):
# raise it whenever a change moves an attack's numbers, so that no cache serves the old ones.
# 2: the linear probe's test set is sampled to `max_items` per split like every other attack's.
# 3: each relearning point also asks retain questions; an attack that broke the model is void.
# 4: the quantisation attack; membership by the fact's tokens, Min-K%++, zlib and the oracle as
#    reference model (AUCs now in float64); prefill without the name and by prefix length;
#    leak@k by sampling; readouts v2: the logit lens ranked within the value pool, at the
#    fact's and the entity positions; ridge probes of every fact at the entity positions.
# 5: direction ablation v2: candidates over positions x layers x kinds, chosen on half the forget
#    people and reported on the other half; weight orthogonalisation. Relearning: `relearn_data`.
#    Few-shot in-context relearning. Every answer against the oracle under the identical attack.
# 6: the universal soft-prompt attack (fitted on the taught half, scored on the held-out half);
#    multiple choice by option likelihood under the attacks that change the model.
AUDIT_PROTOCOL = 6


class AuditError(AsruLabError, ValueError):
    """An audit that cannot be run as asked: an empty forget split, a reference or oracle that
    does not fit the audited model or benchmark, settings out of range."""


@dataclass
class AuditConfig:
    """How an audit attacks an unlearned model (defaults: 617 s on a free 2-core machine for
    the embedded model with its reference and oracle under protocol 6 — relearning 329 s (8
    curves of 250 steps), the oracle's run of the generating attacks 137 s (paid once per
    oracle and setting in a process), direction ablation 73 s, the soft prompt 20 s, leak@16
    19 s, the rest 45 s; measured for asru_stage1, seed 0)."""

    attacks: tuple[str, ...] = field(
        default=ATTACKS, metadata={"help": f"attacks to run, of {', '.join(ATTACKS)}"}
    )
    max_items: int | None = field(
        default=64,
        metadata={
            "help": "forget and test questions per split and measurement (a seeded sample; "
            "None: every one)"
        },
    )
    retain_items: int | None = field(
        default=None,
        metadata={
            "help": "retain questions asked for recall (a seeded sample; None: max_items, or "
            "64 when that is None)"
        },
    )
    oracle_attacks: bool = field(
        default=True,
        metadata={
            "help": "with an oracle: run the generating attacks on it too (the same questions "
            "and settings), for the oracle's leak and the excess over it beside every attack's "
            "(computed once per oracle and setting in a process)"
        },
    )
    seed: int = field(default=0, metadata={"help": "seeds every sample, split and training run"})
    batch_size: int = field(default=32, metadata={"help": "prompts per forward pass"})
    max_new_tokens: int = field(default=24, metadata={"help": "tokens generated per answer"})
    ablation_kinds: tuple[str, ...] = field(
        default=ABLATION_KINDS,
        metadata={
            "help": "direction ablation: the kinds of candidate direction, some of "
            f"{ABLATION_KINDS}"
        },
    )
    ablation_positions: tuple[str, ...] = field(
        default=ABLATION_POSITIONS,
        metadata={
            "help": "direction ablation: the prompt positions the directions are read at, some "
            f"of {ABLATION_POSITIONS}"
        },
    )
    ablation_layer_stride: int = field(
        default=1,
        metadata={
            "help": "direction ablation: one-direction-everywhere candidates from every n-th "
            "layer (raise it for deep models: each candidate is one forward pass of the fitted "
            "questions)"
        },
    )
    ablation_top: int = field(
        default=3,
        metadata={
            "help": "direction ablation: the candidates (best answer likelihood on the fitted "
            "half) asked there; the one that leaks most is reported on the held-out half"
        },
    )
    ablation_orthogonalize: bool = field(
        default=True,
        metadata={
            "help": "direction ablation: also project the best one-direction candidate out of "
            "the weights, and prefill and relearn the orthogonalised copy"
        },
    )
    in_context_shots: int = field(
        default=4,
        metadata={
            "help": "in-context relearning: the taught half's facts shown as earlier turns "
            "before each held-out question"
        },
    )
    soft_prompt_tokens: int = field(
        default=8,
        metadata={"help": "soft-prompt attack: the learnt vectors put before each question"},
    )
    soft_prompt_steps: int = field(
        default=150,
        metadata={"help": "soft-prompt attack: Adam steps of relearn_batch_size taught questions"},
    )
    soft_prompt_lr: float = field(
        default=0.1,
        metadata={
            "help": "soft-prompt attack: Adam's rate in units of the token-embedding table's "
            "standard deviation"
        },
    )
    relearn_steps: tuple[int, ...] = field(
        default=(0, 25, 50, 100, 250),
        metadata={
            "help": "relearning: fine-tuning steps k after which the leak is measured "
            f"(increasing, the last 1..{RELEARN_MAX_STEPS})"
        },
    )
    relearn_lr: tuple[float, ...] = field(
        default=(1e-3,),
        metadata={"help": "relearning: the LoRA's AdamW learning rates (constant), a setting each"},
    )
    relearn_full_lr: tuple[float, ...] = field(
        default=(3e-4,),
        metadata={
            "help": "relearning: the AdamW learning rates (constant) of full fine-tuning (every "
            "parameter, the vision tower and merger included), a setting each"
        },
    )
    relearn_modes: tuple[str, ...] = field(
        default=RELEARN_MODES,
        metadata={"help": f"relearning: how the copy is fine-tuned, some of {RELEARN_MODES}"},
    )
    relearn_data: tuple[str, ...] = field(
        default=RELEARN_DATA,
        metadata={
            "help": "relearning: what the copy is fine-tuned on, 'forget' (half the forget "
            "people's facts; it carries the control) and some of 'benign' (retain facts), "
            "'unrelated' (picture questions about others)"
        },
    )
    relearn_batch_size: int = field(default=8, metadata={"help": "relearning: examples per step"})
    relearn_lora_r: int = field(
        default=16, metadata={"help": "relearning: LoRA rank (alpha = rank) on the LM's linears"}
    )
    relearn_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "relearning: recompute activations in the backward pass (memory of one "
            "layer's activations instead of all; a 2B model's step fits in 24 GiB); None: for "
            f"models of {CHECKPOINT_FROM:.0e} parameters or more (it costs the embedded model "
            "1.3-1.45x the time of a step and saves it nothing that matters)"
        },
    )
    probe_attribute: str | None = field(
        default=None,
        metadata={
            "help": "linear-probe extraction: probe this fact attribute only (default: every "
            "fact attribute of the forget people)"
        },
    )
    probe_l2: float = field(
        default=1e-3,
        metadata={"help": "linear-probe extraction: L2 penalty of the ridge classifier"},
    )
    lens_top_k: int = field(
        default=10,
        metadata={
            "help": "logit lens over the whole vocabulary: a fact in the top k at some layer is "
            "found (the pool lens ranks within the attribute's values instead)"
        },
    )
    mink_fraction: float = field(
        default=0.2,
        metadata={
            "help": "membership inference: min-k% and min-k%++ average this fraction of the "
            "lowest token scores"
        },
    )
    perturbations: tuple[str, ...] = field(
        default=PERTURBATIONS,
        metadata={"help": f"input perturbations of the forget portraits, of {PERTURBATIONS}"},
    )
    quant_bits: tuple[int, ...] = field(
        default=(8, 4),
        metadata={
            "help": f"quantisation: the weight widths in bits, some of {QUANT_BITS} (each a "
            "round-to-nearest copy of the model; Zhang et al. 2024: 4 bits undo small updates)"
        },
    )
    prefill_words: tuple[int, ...] = field(
        default=(1, 2, 3),
        metadata={
            "help": "prefill: the prefix-length sweep, the first n words of the answer's "
            "words before the fact, per n"
        },
    )
    sample_k: int = field(
        default=16, metadata={"help": "sampling: answers sampled per question (leak@k)"}
    )
    sample_temperature: float = field(
        default=1.0, metadata={"help": "sampling: the temperature (no top-k or top-p cut)"}
    )
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    @property
    def retain_n(self) -> int:
        """How many retain questions are asked (`retain_items`, else `max_items`, else 64)."""
        return self.retain_items or self.max_items or 64

    def __post_init__(self) -> None:
        check_fields(
            self,
            ConfigError,
            max_items=">= 2",
            retain_items=">= 2",
            batch_size=">= 1",
            max_new_tokens=">= 1",
            relearn_batch_size=">= 1",
            relearn_lora_r=">= 1",
            probe_l2=">= 0",
            lens_top_k=">= 1",
            mink_fraction="(0, 1]",
            sample_k=">= 1",
            sample_temperature="> 0",
            ablation_layer_stride=">= 1",
            ablation_top=">= 1",
            in_context_shots=">= 1",
            soft_prompt_tokens=">= 1",
            soft_prompt_steps=">= 1",
            soft_prompt_lr="> 0",
        )
        words = self.prefill_words
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in words) or any(
            b <= a for a, b in zip(words, words[1:], strict=False)
        ):
            raise ConfigError(
                f"AuditConfig.prefill_words must be whole numbers of words >= 1, increasing, "
                f"got {words}"
            )
        for name, allowed in (("attacks", ATTACKS), ("perturbations", PERTURBATIONS)):
            unknown = [a for a in getattr(self, name) if a not in allowed]
            if unknown:
                raise ConfigError(
                    f"AuditConfig.{name} has unknown entries {unknown}; expected some of {allowed}"
                )
        check_choices(self, "quant_bits", QUANT_BITS)
        steps = self.relearn_steps
        if not steps:
            raise ConfigError("AuditConfig.relearn_steps is empty; give e.g. (0, 25, 50, 100, 250)")
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in steps):
            raise ConfigError(
                f"AuditConfig.relearn_steps must be whole numbers of steps >= 0, got {steps}"
            )
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ConfigError(f"AuditConfig.relearn_steps must be strictly increasing, got {steps}")
        if not 1 <= steps[-1] <= RELEARN_MAX_STEPS:
            raise ConfigError(
                f"AuditConfig.relearn_steps must end at k from 1 (the control scores the taught "
                f"half after some training) to {RELEARN_MAX_STEPS} (RELEARN_MAX_STEPS: examples "
                "repeat, so the data bounds no k, the attack's budget does: about 30 passes over "
                f"the taught half; longer is retraining), got {steps}"
            )
        check_choices(self, "relearn_modes", RELEARN_MODES)
        for name, allowed in (
            ("ablation_kinds", ABLATION_KINDS),
            ("ablation_positions", ABLATION_POSITIONS),
        ):
            check_choices(self, name, allowed)
        data = self.relearn_data
        if (
            "forget" not in data
            or any(d not in RELEARN_DATA for d in data)
            or len(set(data)) < len(data)
        ):
            raise ConfigError(
                f"AuditConfig.relearn_data must be 'forget' (the taught half, which carries the "
                f"control) and any others of {RELEARN_DATA}, each once, got {data}"
            )
        for name, what in (("relearn_lr", "the LoRA's"), ("relearn_full_lr", "full fine-tuning's")):
            rates = getattr(self, name)
            if not rates or any(lr <= 0 for lr in rates) or len(set(rates)) < len(rates):
                raise ConfigError(
                    f"AuditConfig.{name} ({what} learning rates) must be one or more rates > 0, "
                    f"each once, got {rates}; e.g. (1e-4, 3e-4)"
                )
