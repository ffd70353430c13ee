"""asru_lab: ASRU unlearning (activation steering meets reinforcement unlearning) for VLMs.

```python
import asru_lab as al
model = al.load_model()            # the embedded tiny Qwen3-VL
bench = al.load_benchmark()        # the synthetic profiles benchmark
al.generate(model, image, "Where was this person born?")
report = al.evaluate(model, bench) # report.table(), report.to_json(path)
probe = al.locate(model, bench)    # stage 1.1: a SteeringProbe chosen by a sweep
with probe.apply(model):           # steered (gated) generation; hooks removed on exit
    al.generate(model, image, "Where was this person born?")
steered, record = al.redirect(model, probe, bench)  # stage 1.2: the probe, in the weights
final, record = al.reinforce(steered, bench, probe=probe)  # stage 2: GRPO
result = al.unlearn(model, bench, "npo")                # any registered method (al.METHODS)
al.reproduce("figures/")          # every method x forget ratio: tables, figures, manifest
report = al.audit(result.model, bench, reference=model, oracle=al.load_oracle())  # forgotten?
```
"""

from asru_lab.auditing import AuditConfig, AuditError, AuditReport, audit, load_oracle
from asru_lab.baselines import METHODS, UnlearnConfig, UnlearnError, save_unlearned, unlearn
from asru_lab.data import (
    Benchmark,
    BenchmarkError,
    Person,
    QAItem,
    export_benchmark,
    load_benchmark,
)
from asru_lab.evaluation.harness import EvalConfig, evaluate
from asru_lab.evaluation.report import EvalReport
from asru_lab.generation import generate
from asru_lab.models.loading import LoadedModel, ModelLoadError, load_model
from asru_lab.probe import ProbeError, SteeringProbe, load_probe
from asru_lab.runs.reproduce import ReproduceConfig, reproduce
from asru_lab.runs.tables import load_results
from asru_lab.stages.locate import LocateConfig, locate
from asru_lab.stages.redirect import RedirectConfig, RedirectError, redirect, save_redirected
from asru_lab.stages.reinforce import ReinforceConfig, ReinforceError, reinforce, save_reinforced
from asru_lab.validation import ConfigError
from asru_lab.version import __version__

__all__ = [
    "AuditConfig",
    "AuditError",
    "AuditReport",
    "Benchmark",
    "BenchmarkError",
    "ConfigError",
    "EvalConfig",
    "EvalReport",
    "LoadedModel",
    "LocateConfig",
    "METHODS",
    "ModelLoadError",
    "Person",
    "ProbeError",
    "QAItem",
    "RedirectConfig",
    "RedirectError",
    "ReinforceConfig",
    "ReinforceError",
    "ReproduceConfig",
    "SteeringProbe",
    "UnlearnConfig",
    "UnlearnError",
    "__version__",
    "audit",
    "evaluate",
    "export_benchmark",
    "generate",
    "load_benchmark",
    "load_model",
    "load_oracle",
    "load_probe",
    "load_results",
    "locate",
    "redirect",
    "reinforce",
    "reproduce",
    "save_redirected",
    "save_reinforced",
    "save_unlearned",
    "unlearn",
]
