"""Checkers for the teaching workshop (`notebooks/workshop/`): each compares a student's answer
with the library's own computation and says, in a sentence, what is right or what to try next.

Every checker returns a `Feedback` that displays as its message: "correct ✓ — ..." or
"not yet — hint: ...". A missing answer (None, or a stub that returns nothing) is never an
error, only a hint, so the exercise notebooks run from top to bottom before anyone has written
a line. With `strict=True` (the solutions notebooks) a wrong or missing answer raises
`WorkshopCheckError` instead, so that running the solutions tests them.

The exercises, in the paper's words:

1. the **knowledge-absence direction** `v = mean h_L(target) - mean h_L(forget)` at the last
   prompt token, computed by hand (`check_direction`), compared with the library's
   (`check_cosine`) and used to steer a forget person into a refusal (`check_steering`);
2. the same at other layers: held-out **separability** (AUROC) of never-seen vs forget faces
   along v (`check_separability`) and the **steering effect** on forget and retain prompts
   (`check_steering_effect`);
3. a stage 2 **reward** with TRL's signature, scored on canonical completions
   (`canonical_completions`, `score_completions`, `check_reward`);
4. **break the unlearning** of `steer_only`: what the method adds to the residual stream
   (`check_added`), projected out of every layer with hooks (`check_ablation`), and the answer
   prefilled up to the fact (`check_prefill`); each checks that the forgotten facts come back;
5. **make it forget**: the shrink-and-perturb step of distillation by hand (`check_perturbed`),
   then a student distilled from `steer_only` on everyone but the forget people, at an alpha for
   which the prefill of exercise 4 no longer works (`check_forgotten`, `prefill_leak`, `recall`).
"""

from asru_lab.workshop.attack import (
    check_ablation,
    check_added,
    check_prefill,
    reference_added,
)
from asru_lab.workshop.common import (
    SET_NAMES,
    Feedback,
    WorkshopCheckError,
    example_sets,
    reference_directions,
)
from asru_lab.workshop.direction import (
    check_cosine,
    check_direction,
    check_steering,
)
from asru_lab.workshop.forget import check_forgotten, check_perturbed, prefill_leak, recall
from asru_lab.workshop.layers import (
    check_separability,
    check_steering_effect,
    reference_separability,
    reference_steering_effect,
)
from asru_lab.workshop.reward import (
    CONTEXTUAL_REFUSALS,
    GIBBERISH,
    REWARD_ATTRIBUTES,
    REWARD_ORDER,
    RIGID_REFUSAL,
    canonical_completions,
    check_reward,
    reward_columns,
    score_completions,
)

__all__ = [
    "CONTEXTUAL_REFUSALS",
    "Feedback",
    "GIBBERISH",
    "REWARD_ATTRIBUTES",
    "REWARD_ORDER",
    "RIGID_REFUSAL",
    "SET_NAMES",
    "WorkshopCheckError",
    "canonical_completions",
    "check_ablation",
    "check_added",
    "check_cosine",
    "check_direction",
    "check_forgotten",
    "check_perturbed",
    "check_prefill",
    "check_reward",
    "check_separability",
    "check_steering",
    "check_steering_effect",
    "example_sets",
    "prefill_leak",
    "recall",
    "reference_added",
    "reference_directions",
    "reference_separability",
    "reference_steering_effect",
    "reward_columns",
    "score_completions",
]
