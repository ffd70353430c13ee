"""KL-Min: gradient ascent on the forget answers; on retain, NLL plus the KL divergence from
the vanilla model's next-token distributions (the model may forget, but not drift)."""

from asru_lab.baselines.gradient import register_gradient_method


def loss(step, config):
    retain = step.nll("retain") + step.kl_to_reference("retain")
    return -step.nll("forget") + config.retain_weight * retain


register_gradient_method(
    "kl_min",
    "gradient ascent on forget + NLL and KL to the vanilla model on retain",
    loss,
    uses_retain=True,
)
