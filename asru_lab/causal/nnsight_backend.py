"""The nnsight backend: the HF model itself, traced with nnsight at the module paths the
architecture adapter names (any HF architecture)."""

from __future__ import annotations

from asru_lab.capture import module_envoy, nnsight_model
from asru_lab.causal.patching import _module_site, _restore, _Run, _RunOutput
from asru_lab.hooks import residual_site
from asru_lab.models.loading import LoadedModel


class _NnsightBackend:
    name = "nnsight"

    def __init__(self, lm: LoadedModel, visual: bool, embeddings: bool = False) -> None:
        self.lm = lm
        self.wrapped = nnsight_model(lm)
        # the corrupted sites: the visual features (noise), or the token embeddings (name)
        self.visual_paths = lm.adapter.visual_feature_paths(lm.model) if visual else []
        if embeddings:
            self.visual_paths = [lm.adapter.embed_path]

    def _tensor(self, component: str, layer: int):
        path, access = _module_site(self.lm, component, layer)
        envoy = module_envoy(self.wrapped, path)
        if access == "input":
            return envoy.input
        return envoy.output[0] if access == "output[0]" else envoy.output

    @staticmethod
    def _order(lm: LoadedModel, site: tuple[str, int]) -> tuple[int, int]:
        # nnsight meets modules in the order the forward pass runs them
        component, layer = site
        if component == "residual":
            at, where = residual_site(lm, layer)
            return (at, 0 if where == "input" else 3)
        return (layer, 1 if component == "attention" else 2)

    def run(self, run: _Run) -> _RunOutput:
        lm, wrapped = self.lm, self.wrapped
        sites = sorted({*run.patches, *run.read_sites}, key=lambda s: self._order(lm, s))
        saved, visual = {}, []
        with wrapped.trace(**run.inputs, logits_to_keep=1):
            for k, path in enumerate(self.visual_paths):
                out = module_envoy(wrapped, path).output
                if run.noise is not None:
                    out[:] = out + run.noise[k].to(out.dtype)
                if run.read_visual:
                    visual.append(out.clone().save())
            for site in sites:
                act = self._tensor(*site)
                if site in run.patches:
                    _restore(act, run.patches[site])
                if site in run.read_sites:
                    saved[site] = act.clone().save()
            logits = wrapped.output.logits[:, -1].save()
        return _RunOutput(logits, saved, visual)
