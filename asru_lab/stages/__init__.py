"""The method's stages, one module each: stage 0 `finetune` (teach a vanilla model the people),
stage 1.1 `locate` (the knowledge-absence direction, as a SteeringProbe), stage 1.2 `redirect`
(the probe's effect written into the weights) and stage 2 `reinforce` (GRPO on the refusal
boundary). The functions are exported as `asru_lab.locate`, `asru_lab.redirect`, ...; this
package imports nothing, so `import asru_lab.stages.locate` is always the module.
"""
