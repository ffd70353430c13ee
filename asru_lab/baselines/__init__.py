"""Unlearning methods, registered by name: the paper's baselines and ASRU itself.

```python
from asru_lab.baselines import METHODS, unlearn
result = unlearn(model, bench, "npo")          # Unlearned: .model, .record, .probe
with result.applied():                         # the probe's hooks for steer_only
    report = al.evaluate(result.model, bench)
```

| name | what it does |
|---|---|
| `ga` | gradient ascent on the forget answers |
| `grad_diff` | GA on forget + NLL on retain |
| `kl_min` | GA on forget + NLL and KL to the vanilla model on retain |
| `npo` | negative preference optimisation against the vanilla model |
| `refusal_sft` | forget questions fine-tuned to a stock refusal |
| `mmunlearner` | GradDiff on the weights whose forget/retain saliency is highest, per side |
| `steer_only` | the stage 1.1 probe applied at inference |
| `gated_steer` | the probe's direction projected off the retain activations, gated, at inference |
| `asru_stage1` | stage 1.2: the probe's direction in the weights |
| `asru` | stage 1.2 + GRPO (stage 2) |
| `asru_undo` | ASRU, then its student re-grown by distillation (UNDO) |
| `rmu` | RMU: the forget people's entity tokens sent toward a random direction at an early layer |
| `repnoise` | RepNoise: forget answers' MLP outputs pushed toward Gaussian noise, lens ascent |
| `npo_sam` | NPO minimised at the worst nearby weights (sharpness-aware), + retain NLL |

The gradient baselines share one trainer (`baselines.trainer`): LoRA on the language model
(MMUnlearner: its saliency-masked weights, in full), answer-only loss; each is a loss function
in its own module. A method's tensors (MMUnlearner's masks) are saved beside the model in
`unlearn.safetensors` and read back with `load_unlearned_tensors`.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from asru_lab.artifacts import atomic_dir, own_entries
from asru_lab.baselines import (  # noqa: F401
    asru,
    deep,
    ga,
    gated_steer,
    grad_diff,
    kl_min,
    mmunlearner,
    npo,
    npo_sam,
    refusal_sft,
    repnoise,
    rmu,
    steer_only,
    undo,
)
from asru_lab.baselines.registry import METHODS, Method, Unlearned, UnlearnError, get_method
from asru_lab.baselines.trainer import UnlearnConfig
from asru_lab.data.schema import Benchmark
from asru_lab.models.loading import LoadedModel
from asru_lab.probe import SteeringProbe
from asru_lab.stages.locate import LocateConfig, locate

UNLEARN_FILE = "unlearn.json"
TENSORS_FILE = "unlearn.safetensors"  # `Unlearned.tensors`, e.g. MMUnlearner's weight masks
PROBE_DIR = "probe"


def unlearn(
    lm: LoadedModel,
    bench: Benchmark,
    method: str,
    config: object | None = None,
    *,
    probe: SteeringProbe | None = None,
    locate_config: LocateConfig | None = None,
) -> Unlearned:
    """Run the registered `method` on `lm` (never modified) to forget `bench`'s forget split.

    `config`: the method's config dataclass (default: `METHODS[method].default_config()`).
    Methods that need a stage 1.1 probe use `probe`, or locate one first with `locate_config`.
    """
    entry = get_method(method)
    config = config if config is not None else entry.default_config()
    expected = type(entry.default_config())
    if not isinstance(config, expected):
        raise UnlearnError(
            f"method {method!r} takes a {expected.__name__}, got a {type(config).__name__}"
        )
    if not bench.split("forget"):
        raise UnlearnError(f"{bench.name} has an empty forget split: there is nothing to unlearn")
    started = time.time()
    if entry.needs_probe and probe is None:
        probe = locate(lm, bench, locate_config or LocateConfig())
    result = entry.run(lm, bench, config, probe)
    result.record["wall_seconds"] = round(time.time() - started, 2)
    return result


def save_unlearned(result: Unlearned, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write the model (a `load_model` directory) with `unlearn.json`, the method's tensors
    (`Unlearned.tensors`) in `unlearn.safetensors` beside it, and the probe to apply in
    `out_dir/probe/` for inference-time methods (`overwrite`: see `LoadedModel.save`). Each
    piece is written atomically. Returns `out_dir`."""
    out = result.model.save(out_dir, records={UNLEARN_FILE: result.record}, overwrite=overwrite)
    if result.tensors:
        tensors = {name: t.detach().cpu().contiguous() for name, t in result.tensors.items()}
        with atomic_dir(out, overwrite=overwrite, keep=own_entries(out)) as tmp:
            save_file(tensors, str(tmp / TENSORS_FILE), metadata={"method": result.method})
    if result.probe is not None:
        result.probe.save(out / PROBE_DIR)
    return out


def load_unlearned_tensors(out_dir: str | Path) -> dict[str, torch.Tensor]:
    """The tensors `save_unlearned` wrote beside an unlearned model (name -> tensor, as the
    method returned them; MMUnlearner: parameter name -> boolean mask). Never unpickles."""
    path = Path(out_dir) / TENSORS_FILE
    if not path.is_file():
        raise UnlearnError(
            f"{Path(out_dir)} holds no {TENSORS_FILE}: only methods that return tensors "
            "(mmunlearner's weight masks) write one; check the folder and its unlearn.json"
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise UnlearnError(f"{path} is not a readable safetensors file ({exc})") from None


__all__ = [
    "METHODS",
    "Method",
    "UnlearnConfig",
    "UnlearnError",
    "Unlearned",
    "get_method",
    "load_unlearned_tensors",
    "save_unlearned",
    "unlearn",
]
