"""NPO (negative preference optimisation): push the forget answers' likelihood below the
vanilla model's, with a loss that saturates instead of diverging like gradient ascent.

loss = -(2 / beta) * mean log sigmoid(-beta * (log p(answer) - log p_vanilla(answer)))
"""

import torch.nn.functional as F

from asru_lab.baselines.gradient import register_gradient_method


def loss(step, config):
    ratio = step.sequence_logprob("forget") - step.sequence_logprob("forget", reference=True)
    return -(2.0 / config.npo_beta) * F.logsigmoid(-config.npo_beta * ratio).mean()


# the public code runs NPO at half the other baselines' learning rate
register_gradient_method(
    "npo",
    "negative preference optimisation against the vanilla model",
    loss,
    uses_retain=False,
    defaults={"lr": 1e-5},
    learning_rates=(1e-5, 3e-5, 6e-5, 1e-4),
)
