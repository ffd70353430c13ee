"""GA: gradient ascent on the forget answers (maximise their negative log-likelihood)."""

from asru_lab.baselines.gradient import register_gradient_method


def loss(step, config):
    return -step.nll("forget")


register_gradient_method("ga", "gradient ascent on the forget answers", loss, uses_retain=False)
