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
| `steer_only` | the stage 1.1 probe applied at inference |
| `asru_stage1` | stage 1.2: the probe's direction in the weights |
| `asru` | stage 1.2 + GRPO (stage 2) |

The gradient baselines share one trainer (`baselines.trainer`): LoRA on the language model,
answer-only loss; each is a loss function in its own module.
"""

from __future__ import annotations

import time
from pathlib import Path

from asru_lab.baselines import asru, ga, grad_diff, kl_min, npo, refusal_sft, steer_only  # noqa: F401
from asru_lab.baselines.registry import METHODS, Method, Unlearned, UnlearnError, get_method
from asru_lab.baselines.trainer import UnlearnConfig
from asru_lab.data.schema import Benchmark
from asru_lab.models.loading import LoadedModel
from asru_lab.probe import SteeringProbe
from asru_lab.stages.locate import LocateConfig, locate

UNLEARN_FILE = "unlearn.json"
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
    """Write the model (a `load_model` directory) with `unlearn.json`, and the probe to apply
    in `out_dir/probe/` for inference-time methods (`overwrite`: see `LoadedModel.save`).
    Returns `out_dir`."""
    out = result.model.save(out_dir, records={UNLEARN_FILE: result.record}, overwrite=overwrite)
    if result.probe is not None:
        result.probe.save(out / PROBE_DIR)
    return out


__all__ = [
    "METHODS",
    "Method",
    "UnlearnConfig",
    "UnlearnError",
    "Unlearned",
    "get_method",
    "save_unlearned",
    "unlearn",
]
