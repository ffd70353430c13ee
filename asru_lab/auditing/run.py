"""`audit`: every attack against one unlearned model, checked inputs, one `AuditReport`."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace

from asru_lab.data.schema import Benchmark
from asru_lab.evaluation.harness import forget_people, oracle_mismatch
from asru_lab.models.loading import LoadedModel, load_model
from asru_lab.probe import SteeringProbe

from . import (
    ablation,
    attacks,
    choice,
    in_context,
    oracle_cache,
    quantization,
    readout,
    relearn,
    soft_prompt,
    stats,
)
from .config import AuditConfig, AuditError
from .measure import sample
from .report import AuditReport, summarize, void_attacks, worst_relearn_curves


def load_oracle(forget_ratio: float = 0.1, split_seed: int = 0, **load_kwargs) -> LoadedModel:
    """The retrain oracle of the synthetic benchmark's forget set (`forget_ratio`,
    `split_seed`): the embedded model's recipe without the forget people. The default forget
    set's oracle ships with the package; another is built once by
    `asru-lab build-embedded --oracle --forget-ratio R --split-seed S` (about 40 min on 2
    cores)."""
    from asru_lab.models.embedded import oracle_dir

    path = oracle_dir(forget_ratio, split_seed)
    if not (path / "config.json").is_file():
        raise AuditError(
            f"no retrain oracle for forget ratio {forget_ratio:g}, split seed {split_seed} "
            f"(looked in {path}); build it once with `asru-lab build-embedded --oracle "
            f"--forget-ratio {forget_ratio:g} --split-seed {split_seed}` (about 40 minutes "
            "on 2 CPU cores)"
        )
    return load_model(path, **load_kwargs)


def check_comparable(lm: LoadedModel, other: LoadedModel, role: str) -> None:
    """Refuse a reference or oracle whose architecture, sizes or vocabulary differ from the
    audited model's (its activations and tokens could not be compared)."""
    diff = lm.mismatch(other)
    if diff:
        raise AuditError(
            f"the {role} model {other.name} does not fit the audited model {lm.name}: {diff} "
            f"({role} vs audited); give the {role} of the same architecture and size"
        )


def check_oracle(oracle: LoadedModel, bench: Benchmark) -> None:
    """Refuse an oracle that was not trained without exactly the audited forget people."""
    record = oracle.info.get("oracle")
    if not isinstance(record, dict) or not isinstance(record.get("forget_ids"), list):
        raise AuditError(
            f"{oracle.name} is not a retrain oracle: its asru_lab_model.json has no 'oracle' "
            "record naming the forget people it never saw (build one with "
            "`asru-lab build-embedded --oracle`)"
        )
    wrong_set = oracle_mismatch(oracle, bench)
    if wrong_set:
        raise AuditError(wrong_set)


def audit(
    lm: LoadedModel,
    bench: Benchmark,
    *,
    reference: LoadedModel | None = None,
    oracle: LoadedModel | None = None,
    probe: SteeringProbe | None = None,
    config: AuditConfig | None = None,
    oracle_cache: bool = True,
) -> AuditReport:
    """Attack an unlearned model and measure whether its forgotten facts are gone or hidden.

    `lm`: the audited model; `probe`: an inference-time method's probe, applied whenever the
    model runs (`steer_only`); `reference`: the model before unlearning (direction ablation (a)
    and the readouts' ceiling: the linear probes' and the logit lens'); `oracle`: the retrain
    oracle of the same forget set (the readouts' floor, privleak, and relearning's: the same
    fine-tuning on it, its control and its held-out curve). Every attack runs on the
    forget split and the test split (new views and wordings) with seeded samples
    (`AuditConfig`); definitions are in each attack's docstring (`asru_lab.auditing.attacks`,
    `.relearn`, `.readout`) and the README. The oracle's side (its attacks and relearning
    curves) is kept on disk and found again by every later audit that would compute exactly the
    same (`asru_lab.auditing.oracle_cache`); `oracle_cache=False` neither reads nor writes it.
    """
    cfg = replace(config) if config is not None else AuditConfig()
    people = forget_people(bench)
    if not bench.split("forget") or not people:
        raise AuditError(
            f"the forget split of {bench.name} is empty: there is nothing to audit "
            "(choose a forget set, e.g. forget_ratio=0.1)"
        )
    if reference is not None:
        check_comparable(lm, reference, "reference")
    if oracle is not None:
        check_comparable(lm, oracle, "oracle")
        check_oracle(oracle, bench)
    if probe is not None:
        probe.validate(lm)
    if "linear_probe" in cfg.attacks:
        readout.probed_attributes(bench, cfg)  # refuses an unknown attribute before any work
    if "relearn" in cfg.attacks and "full" in cfg.relearn_modes:
        relearn.check_room(lm)  # refused now rather than after the attacks before it
    subject = attacks.Subject(lm, bench, cfg, probe, oracle_cache=oracle_cache)
    for split in (*attacks.ATTACKED_SPLITS, "retain"):
        items = bench.questions(split, "qa")
        if not items and split != "test":
            raise AuditError(f"the {split} split of {bench.name} has no generation questions")
        n = cfg.retain_n if split == "retain" else cfg.max_items
        subject.questions[split] = sample(items, n, cfg.seed, split)
    if "mcq_likelihood" in cfg.attacks:
        # scored with no attack and under each attack that changes the model (`choice`)
        for split in attacks.ATTACKED_SPLITS:
            found = choice.mcq_items(bench, split, None, cfg)
            if found:
                subject.mcq[split] = found
    results: dict = {}
    records: list[dict] = []
    timing: dict = {}

    def run(name: str, fn, *args) -> None:
        started = time.time()
        results[name], mine = fn(*args)
        records.extend(mine)
        timing[name] = round(time.time() - started, 1)

    run("none", attacks.no_attack, subject)
    baseline = [r for r in records if r["attack"] == "none" and "leak" in r]  # the answers
    steps = {
        "ablation": (ablation.ablation, subject, reference, baseline),
        "prefill": (attacks.prefill, subject),
        "sampling": (attacks.sampling, subject),
        "in_context": (in_context.in_context, subject),
        "soft_prompt": (soft_prompt.soft_prompt, subject),
        "inputs": (attacks.perturbed_inputs, subject),
        "quantize": (quantization.quantize, subject),
        "relearn": (relearn.relearn, subject, baseline, oracle),
        "linear_probe": (readout.linear_probe, subject, reference, oracle),
        "logit_lens": (readout.logit_lens, subject, reference, oracle),
        "membership": (readout.membership, subject, oracle),
    }
    for name, (fn, *args) in steps.items():
        if name in cfg.attacks:
            run(name, fn, *args)
    if "relearn" in results:
        # per data kind, the worst case at each k over the settings: what the figures draw
        found = results["relearn"]
        found["curves"] = worst_relearn_curves(found, void_attacks(results))
    # every measured answer: each attack's leak with its interval, the per-item union, and the
    # oracle under the identical attacks beside them
    void = void_attacks(results)
    results["leaks"] = stats.leak_table(records, void)
    results["union"] = stats.union(records, void)
    if subject.mcq:
        results["mcq_likelihood"] = stats.choice_table(records, void)
    if oracle is not None and cfg.oracle_attacks and oracle is not lm:
        started = time.time()
        theirs, side_from = _oracle_audit(oracle, bench, reference, cfg, oracle_cache)
        their_void = {**void_attacks(theirs.results)}
        their_void.update({k: v for k, v in void.items() if k.startswith("relearn")})
        table = stats.leak_table(theirs.records + stats.oracle_records(records), their_void)
        results["leaks"] = stats.with_oracle(results["leaks"], table)
        results["oracle_union"] = stats.union(theirs.records, their_void)
        if subject.mcq:
            chosen = stats.choice_table(theirs.records + stats.oracle_records(records), their_void)
            results["mcq_likelihood"] = stats.with_oracle(
                results["mcq_likelihood"], chosen, key="acc"
            )
        timing["oracle_attacks"] = round(time.time() - started, 1)
        results["oracle_side"] = side_from
    timing["total"] = round(sum(timing.values()), 1)
    meta = dict(bench.meta or {})
    return AuditReport(
        model=lm.fingerprint(),
        probe=None if probe is None else probe.metadata(),
        reference=None if reference is None else reference.fingerprint(),
        oracle=None if oracle is None else {**oracle.fingerprint(), **_oracle_set(oracle)},
        benchmark={"name": bench.name, "meta": meta, "forget_people": people},
        config=asdict(cfg),
        results=results,
        summary=summarize(results),
        timing=timing,
        records=records,
    )


# the generating attacks (and multiple choice by option likelihood) run on the oracle as well
# (relearning has its own oracle curves)
ORACLE_SIDE = (
    "ablation",
    "prefill",
    "sampling",
    "in_context",
    "soft_prompt",
    "inputs",
    "quantize",
    "mcq_likelihood",
)
# oracle audits already run in this process, by what they depend on
_ORACLE_AUDITS: dict[str, tuple[LoadedModel, AuditReport]] = {}


def _oracle_audit(
    oracle: LoadedModel,
    bench: Benchmark,
    reference: LoadedModel | None,
    cfg: AuditConfig,
    on_disk: bool = True,
) -> tuple[AuditReport, str]:
    """The oracle audited as itself under the generating attacks of `cfg` (`ORACLE_SIDE`):
    the same questions (the same seeded samples) and settings; the method's probe is not
    applied (the oracle is the model that never learnt). Cached in the process by the oracle,
    benchmark, reference and settings, so that many methods audited against one oracle pay
    for it once; and, with `on_disk`, between processes (`oracle_cache`). Returns the report
    and where it came from: "computed", "memory" (this process) or "disk"."""
    side = replace(
        cfg, attacks=tuple(a for a in cfg.attacks if a in ORACLE_SIDE), oracle_attacks=False
    )
    key = json.dumps(
        [
            oracle.fingerprint(),
            bench.name,
            bench.meta,
            None if reference is None else reference.fingerprint(),
            asdict(side),
        ],
        sort_keys=True,
        default=str,
    )
    key += f":{id(oracle.model)}"  # the very model: an edited copy with the same name is not it
    source = "memory"
    if key not in _ORACLE_AUDITS:
        settings = asdict(replace(side, progress=False))
        name = oracle_cache.key("audit", oracle, bench, settings, reference=reference)
        found = oracle_cache.load(name) if on_disk else None
        source = "disk" if found is not None else "computed"
        if found is not None:
            report = AuditReport(**found)
        else:
            computed = audit(oracle, bench, reference=reference, config=side, oracle_cache=False)
            report = AuditReport(**oracle_cache.normalised(computed.to_dict()))
            if on_disk:
                oracle_cache.store(name, report.to_dict())
        # the model is kept with its report, so that its id is not reused while cached
        _ORACLE_AUDITS[key] = (oracle, report)
    return _ORACLE_AUDITS[key][1], source


def _oracle_set(oracle: LoadedModel) -> dict:
    record = oracle.info.get("oracle", {})
    return {k: record[k] for k in ("forget_ratio", "split_seed") if k in record}
