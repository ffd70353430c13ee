"""Stage 2's configuration (`ReinforceConfig`, the TRL-style pair of `reinforce.py`) and its
error. Both are importable from `asru_lab.stages.reinforce` and `asru_lab` too."""

from __future__ import annotations

from dataclasses import dataclass, field

from asru_lab.errors import AsruLabError
from asru_lab.evaluation.protocols.asru_lab import MAX_NEW_TOKENS
from asru_lab.validation import check_choices, check_fields

BOUNDARY_MODES = ("nearest", "random")
ADVERSARIAL_ATTACKS = ("prefill", "ablation")  # asru_lab.stages.adversary


class ReinforceError(AsruLabError, ValueError):
    """Stage 2 was configured in a way that cannot run; the message says what would."""


@dataclass
class ReinforceConfig:
    """How stage 2 trains. GRPO settings: the paper's, with CPU-sized defaults for the
    embedded model where they differ (`ReinforceConfig.paper()` gives the paper's)."""

    rewards: tuple[str, ...] = field(
        default=("contextual",), metadata={"help": "registered reward names (asru_lab.rewards)"}
    )
    reward_weights: tuple[float, ...] | None = field(
        default=None, metadata={"help": "one per reward; None: all 1"}
    )
    n_forget: int = field(
        default=200, metadata={"help": "forget questions (paper: 200), capped by the split"}
    )
    n_boundary: int = field(
        default=200,
        metadata={"help": "retain questions near the boundary (paper: 200), capped by the split"},
    )
    boundary: str = field(
        default="nearest",
        metadata={"help": '"nearest" (the paper\'s figure) or "random" (the public code)'},
    )
    boundary_candidates: int | None = field(
        default=None, metadata={"help": 'retain questions scored for "nearest" (None: all)'}
    )
    # the judge reads a chosen MCQ option's value like an open answer, so stage 2 can repair MCQs
    tasks: tuple[str, ...] = field(
        default=("qa", "mcq"),
        metadata={
            "help": "question tasks in the forget and boundary sets; with mcq, stage 2 also "
            "repairs the retain MCQ answers stage 1 disturbed"
        },
    )
    text_only: bool = field(
        default=False,
        metadata={
            "help": "include text-only questions; TRL 1.16 cannot batch them with image "
            "questions, so this works only on a benchmark without images"
        },
    )
    num_generations: int = field(default=8, metadata={"help": "rollouts per prompt (paper: 8)"})
    temperature: float = field(default=1.5, metadata={"help": "sampling temperature (paper: 1.5)"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling (paper: 0.95)"})
    beta: float = field(
        default=0.1, metadata={"help": "KL coefficient to the starting model (paper: 0.1)"}
    )
    epsilon: float = field(default=0.2, metadata={"help": "lower clip (paper: 0.2)"})
    epsilon_high: float = field(default=0.3, metadata={"help": "upper clip (paper: 0.3)"})
    learning_rate: float = field(
        default=1e-5,
        metadata={"help": "learning rate (paper: 1e-6 on 4B/8B; the tiny model needs more)"},
    )
    epochs: float = field(default=1.0, metadata={"help": "passes over the prompts (paper: 6)"})
    max_steps: int = field(default=-1, metadata={"help": "GRPO steps; > 0 overrides epochs"})
    batch_size: int = field(
        default=16,
        metadata={"help": "completions per device and step (a multiple of num_generations)"},
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "steps whose gradients make one optimiser update"}
    )
    max_completion_length: int = field(
        default=MAX_NEW_TOKENS["qa"], metadata={"help": "new tokens per rollout"}
    )
    lora_r: int = field(
        default=0,
        metadata={"help": "0: full fine-tuning; > 0: LoRA on the language model's linear layers"},
    )
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator"})
    activation_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "recompute each decoder layer's activations in the backward pass (memory of "
            "one layer's instead of all; about a third more compute; the same gradients)"
        },
    )
    save_steps: int = field(
        default=50, metadata={"help": "checkpoint every N steps (output_dir/checkpoint-N)"}
    )
    resume: bool = field(
        default=False, metadata={"help": "continue from the newest checkpoint in output_dir"}
    )
    logging_steps: int = field(default=5, metadata={"help": "steps between logged metrics"})
    probe_every: int = field(
        default=25,
        metadata={"help": "steps between held-out refusal/leak measurements (0: never)"},
    )
    probe_examples: int = field(
        default=16,
        metadata={"help": "held-out forget and retain questions for that measurement"},
    )
    adversarial: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "attacks a share of the forget rollouts are generated under, some of "
            "prefill, ablation (asru_lab.stages.adversary); none by default"
        },
    )
    adversarial_share: float = field(
        default=0.5,
        metadata={
            "help": "the share of forget questions asked prefilled, and of steps run with the "
            "refusal direction ablated"
        },
    )
    ablation_every: int = field(
        default=10, metadata={"help": "steps between re-estimates of the refusal direction"}
    )
    ablation_fit: int = field(
        default=32,
        metadata={"help": "forget and boundary questions (each) the direction is estimated on"},
    )
    use_vllm: bool = field(
        default=False, metadata={"help": "TRL's vLLM rollouts (needs vLLM and a GPU)"}
    )
    vllm_mode: str = field(
        default="colocate", metadata={"help": '"colocate" or "server" (see TRL\'s GRPOConfig)'}
    )
    seed: int = field(
        default=0,
        metadata={"help": "seeds the prompt samples and training (TRL's seed, data_seed)"},
    )
    progress: bool = field(default=True, metadata={"help": "show progress bars"})

    def __post_init__(self) -> None:
        check_fields(
            self,
            ReinforceError,
            n_forget=">= 1",
            n_boundary=">= 1",
            boundary_candidates=">= 1",
            num_generations=">= 2",
            temperature="> 0",
            top_p="(0, 1]",
            beta=">= 0",
            epsilon=">= 0",
            epsilon_high=">= 0",
            learning_rate="> 0",
            epochs="> 0",
            max_steps=">= -1",
            batch_size=">= 1",
            gradient_accumulation_steps=">= 1",
            max_completion_length=">= 1",
            lora_r=">= 0",
            lora_alpha="> 0",
            save_steps=">= 1",
            logging_steps=">= 1",
            probe_every=">= 0",
            probe_examples=">= 0",
            adversarial_share="(0, 1]",
            ablation_every=">= 1",
            ablation_fit=">= 2",
        )
        self.rewards = tuple(self.rewards)
        self.tasks = tuple(self.tasks)
        self.adversarial = tuple(self.adversarial)
        if self.adversarial:
            check_choices(self, "adversarial", ADVERSARIAL_ATTACKS, ReinforceError)
        if self.adversarial and self.use_vllm:
            raise ReinforceError(
                "adversarial rollouts need TRL's own generation (hooks and the prefilled chat "
                "template do not reach vLLM): use_vllm=False, or adversarial=()"
            )
        unknown = sorted(set(self.tasks) - {"qa", "mcq", "cloze"})
        if unknown or not self.tasks:
            raise ReinforceError(f"tasks must be some of qa, mcq, cloze; got {list(self.tasks)}")
        if self.reward_weights is not None:
            self.reward_weights = tuple(float(w) for w in self.reward_weights)
            if len(self.reward_weights) != len(self.rewards):
                raise ReinforceError(
                    f"{len(self.reward_weights)} reward weights for {len(self.rewards)} rewards "
                    f"{list(self.rewards)}: give one weight per reward, in the same order"
                )
        if self.boundary not in BOUNDARY_MODES:
            raise ReinforceError(
                f"unknown boundary mode {self.boundary!r}; expected one of {BOUNDARY_MODES}"
            )
        batch = self.batch_size * self.gradient_accumulation_steps
        if batch % self.num_generations:
            works = [g for g in range(2, batch + 1) if batch % g == 0]
            raise ReinforceError(
                f"num_generations={self.num_generations} does not divide the batch of "
                f"{batch} completions (batch_size {self.batch_size} x gradient_accumulation_steps "
                f"{self.gradient_accumulation_steps}); with this batch use num_generations in "
                f"{works}, or make batch_size a multiple of {self.num_generations}"
            )

    @classmethod
    def paper(cls, **overrides) -> ReinforceConfig:
        """The paper's GRPO settings: rule reward, lr 1e-6, 6 epochs, random boundary set."""
        base = {
            "rewards": ("asru_rule",),
            "learning_rate": 1e-6,
            "epochs": 6.0,
            "boundary": "random",
        }
        return cls(**{**base, **overrides})
