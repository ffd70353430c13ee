"""The TransformerLens backend: a `TransformerBridge` booted on a twin of the HF model that
shares every weight tensor, run with hooks at the sites the architecture adapter names."""

from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from asru_lab.causal.config import CausalTraceError
from asru_lab.causal.patching import _restore, _Run, _RunOutput, site_names
from asru_lab.models.loading import LoadedModel


@contextmanager
def _without_torchvision_requirement() -> Iterator[None]:
    """TransformerLens's Qwen-VL adapters require torchvision for their own preprocessing;
    the bridge here is only handed processor outputs, so the check is skipped meanwhile."""
    from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter

    original = ArchitectureAdapter._check_required_libraries

    def check(self) -> None:
        saved = self.required_libraries
        self.required_libraries = [lib for lib in saved if lib != "torchvision"]
        try:
            original(self)
        finally:
            self.required_libraries = saved

    ArchitectureAdapter._check_required_libraries = check
    try:
        yield
    finally:
        ArchitectureAdapter._check_required_libraries = original


@contextmanager
def _without_processor_loading() -> Iterator[None]:
    """While booting, TransformerLens loads the model's processor by name and, when that fails,
    **pip-installs torchvision into the running environment** (which pulled a CUDA torch over
    the pinned CPU one here). The bridge only ever gets processor outputs from asru_lab, so its
    processor loading is switched off, and its installer can never run."""
    from transformer_lens.model_bridge.sources.transformers import helpers, source

    saved = source.load_modality_processor, helpers._ensure_torchvision
    source.load_modality_processor = lambda *args, **kwargs: None
    helpers._ensure_torchvision = lambda: False
    try:
        yield
    finally:
        source.load_modality_processor, helpers._ensure_torchvision = saved


def transformer_bridge(lm: LoadedModel):
    """A TransformerLens `TransformerBridge` over `lm`'s weights (shared, not copied).

    The bridge rewires the module tree it is given (wrappers, eager attention), so it gets a
    twin of the HF model whose parameters and buffers *are* `lm`'s tensors; `lm.model` keeps
    its own modules and settings.
    """
    from transformer_lens.model_bridge import TransformerBridge

    hf = lm.model
    shared = {id(t): t for t in [*hf.parameters(), *hf.buffers()]}
    twin = copy.deepcopy(hf, shared)
    try:
        with (
            _without_torchvision_requirement(),
            _without_processor_loading(),
            warnings.catch_warnings(),
            tempfile.TemporaryDirectory() as tmp,
        ):
            warnings.simplefilter("ignore")
            # the bridge is pointed at the loaded model's own config, written out: it never
            # opens the model folder (checked once by load_model) nor looks a name up on the hub
            hf.config.save_pretrained(tmp)
            bridge = TransformerBridge.boot_transformers(
                tmp,
                hf_model=twin,
                tokenizer=lm.tokenizer,
                device=lm.device,
                dtype=next(hf.parameters()).dtype,
                trust_remote_code=False,
            )
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise CausalTraceError(
            f"TransformerLens cannot bridge {lm.name!r} ({lm.adapter.family}): {exc}; "
            "use backend='nnsight'"
        ) from exc
    bridge.eval()
    return bridge


class _LensBackend:
    name = "transformer_lens"

    def __init__(self, lm: LoadedModel, visual: bool) -> None:
        self.lm = lm
        self.bridge = transformer_bridge(lm)
        self.visual = []
        if not visual:
            return
        names = self.bridge.hook_dict
        self.visual = lm.adapter.lens_visual_hooks(lm.model)
        if not all(n in names for n in self.visual):
            raise CausalTraceError(
                f"TransformerLens's bridge for {lm.adapter.family} does not expose the "
                f"{len(self.visual)} visual feature hooks noise corruption needs; "
                "use backend='nnsight'"
            )

    def run(self, run: _Run) -> _RunOutput:
        lm, hooks, reads, visual = self.lm, [], {}, []
        for k, name in enumerate(self.visual):
            if run.noise is not None:
                hooks.append((name, lambda act, hook, k=k: act + run.noise[k].to(act.dtype)))
            if run.read_visual:
                hooks.append((name, lambda act, hook: visual.append(act.detach().clone())))
        for site, patch in run.patches.items():
            name = site_names(lm, self.name, *site)
            hooks.append((name, lambda act, hook, patch=patch: _restore(act, patch)))
        for site in run.read_sites:
            name = site_names(lm, self.name, *site)

            def read(act, hook, site=site):
                reads[site] = act.detach().clone()

            hooks.append((name, read))
        inputs = dict(run.inputs)
        input_ids = inputs.pop("input_ids")
        # only the last position's logits are used (a real model's vocabulary is ~150 k)
        logits = self.bridge.run_with_hooks(
            input_ids, fwd_hooks=hooks, return_type="logits", logits_to_keep=1, **inputs
        )
        return _RunOutput(logits[:, -1], reads, visual)
