"""GradDiff: gradient ascent on the forget answers, descent on the retain answers."""

from asru_lab.baselines.gradient import register_gradient_method


def loss(step, config):
    return -step.nll("forget") + config.retain_weight * step.nll("retain")


register_gradient_method(
    "grad_diff", "gradient ascent on forget + descent on retain", loss, uses_retain=True
)
