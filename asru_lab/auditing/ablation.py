"""Direction ablation: is the forgetting one direction of the residual stream that can be taken
out again?

Candidate directions come from the audited model's residual stream after every decoder layer,
read at three prompt positions (`config.ABLATION_POSITIONS`: the last prompt token, the mean of the
image's tokens, the last token of the name in a question by name), of three kinds
(`config.ABLATION_KINDS`):

- `reference`: mean(audited) - mean(reference) over the forget questions: what unlearning
  added there (needs the model before unlearning);
- `refusal`: the audited model's own refusal direction, mean over the forget questions it
  refuses - mean over the retain questions it answers (Arditi et al. 2024);
- `pc1`: the first principal direction of the per-question differences audited - reference
  (uncentred, signed like their mean): the change that explains most of them, one question
  at a time.

Each is applied in two ways: per layer (each layer's own direction projected out of the stream
after it) over a layer span (`all`, the `early` half, the `late` half), or one direction, the
one read after layer l, projected out after every layer (`from{l}`). A per-question optimised
ablation could make any model say anything, so the search is honest only out of sample:
directions are fitted and **chosen on half of the forget people** (the relearning attack's
taught half, `relearn.halves`) and the leak is **reported on the other half**. Every candidate
is ranked on the fitted half by how ready the ablated model is to answer (`answer_readiness`:
the log-probability that its answer starts as the reference answer does, one forward pass of
each prompt), the `AuditConfig.ablation_top` best per-layer and one-direction candidates are
asked there, and the one of each that leaks most is reported on the held-out half
(`per_layer`, `everywhere`), with retain recall (an ablation that breaks the model recovers
nothing).

Weight orthogonalisation (`orthogonalized`): the `everywhere` direction projected out of
every weight that writes the residual stream (the token embeddings, each layer's attention
output and MLP output projections, the visual projector's and DeepStack's last linears), so
the stream never holds it, without hooks; the orthogonalised copy is then asked plainly, with
the answer prefilled (`orthogonalized+prefill`) and relearnt (`orthogonalized+relearn`: the
first relearning setting on the taught half's facts, its control included).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import replace

import torch

from asru_lab.data.schema import QAItem
from asru_lab.evaluation.harness import forget_people
from asru_lab.generation import encode_prefilled
from asru_lab.models.loading import LoadedModel

from . import choice
from .attacks import ATTACKED_SPLITS, Subject, ask, leaks, prefill
from .config import AuditError
from .measure import _batches, ablated, leak_records, position_states, rate, sample


def _unit(direction: torch.Tensor) -> torch.Tensor:
    return direction / direction.norm().clamp_min(1e-12)


def _mean(states: tuple[torch.Tensor, torch.Tensor], keep: set[int] | None = None):
    """The mean `[n_layers, hidden]` (float64) of the rows read for the items in `keep` (all
    without), or None when there are none."""
    rows, values = states
    picked = [k for k, i in enumerate(rows.tolist()) if keep is None or i in keep]
    return values[picked].double().mean(0) if picked else None


def _pc1(audited, reference) -> torch.Tensor | None:
    """Per layer, the first right singular vector of the per-item differences audited -
    reference (items read at the position in both), signed like their mean; zero where they
    are all zero."""
    a_rows, a_values = audited
    r_index = {i: k for k, i in enumerate(reference[0].tolist())}
    pairs = [(k, r_index[i]) for k, i in enumerate(a_rows.tolist()) if i in r_index]
    if len(pairs) < 2:
        return None
    diff = a_values[[a for a, _ in pairs]].double() - reference[1][[r for _, r in pairs]].double()
    out = []
    for layer in range(diff.shape[1]):
        d = diff[:, layer]
        if float(d.abs().max()) < 1e-9:  # no change: no principal direction either
            out.append(torch.zeros_like(d[0]))
            continue
        _, _, vh = torch.linalg.svd(d, full_matrices=False)
        v = vh[0]
        out.append(v if float(d.mean(0) @ v) >= 0 else -v)
    return torch.stack(out)


def fit_directions(
    subject: Subject,
    reference: LoadedModel | None,
    fit: Sequence[QAItem],
    refused: set[int],
    answered: Sequence[QAItem],
) -> dict[tuple[str, str], torch.Tensor | str]:
    """Per (kind, position), the `[n_layers, hidden]` directions fitted on the `fit` questions
    (`refused`: the indices of those the audited model refuses; `answered`: retain questions
    it answers), or why there are none."""
    cfg = subject.config

    def states(lm, items, applied, desc):
        with applied():
            return position_states(
                lm,
                subject.bench,
                items,
                batch_size=cfg.batch_size,
                progress=cfg.progress,
                desc=desc,
            )

    mine = states(subject.lm, fit, subject.applied, "ablation: audited states")
    theirs = (
        states(reference, fit, nullcontext, "ablation: reference states")
        if reference is not None
        else None
    )
    retain = states(subject.lm, answered, subject.applied, "ablation: retain states")
    found: dict[tuple[str, str], torch.Tensor | str] = {}
    for position in cfg.ablation_positions:
        for kind in cfg.ablation_kinds:
            why = None
            if kind in ("reference", "pc1") and theirs is None:
                why = "no reference model given"
            elif kind == "reference":
                a, r = _mean(mine[position]), _mean(theirs[position])
                direction = None if a is None or r is None else a - r
            elif kind == "pc1":
                direction = _pc1(mine[position], theirs[position])
            else:
                a, r = _mean(mine[position], refused), _mean(retain[position])
                direction = None if a is None or r is None else a - r
                if not refused or not answered:
                    why = (
                        f"the model refuses {len(refused)} of the fitted forget questions and "
                        f"answers {len(answered)} retain questions: a refusal direction needs both"
                    )
            if why is None and direction is None:
                why = f"no question is read at the {position} position"
            elif why is None and float(direction.norm(dim=-1).max()) < 1e-6:
                why = "the audited model's states equal the reference's there"
            found[kind, position] = why if why is not None else direction
    return found


def candidates(directions: torch.Tensor, stride: int) -> dict[str, dict[int, torch.Tensor]]:
    """The ways to apply one (kind, position)'s per-layer `directions`: per layer over the
    spans `all`, `early` (the first half of the layers), `late` (the rest), and `from{l}` (the
    direction after layer l at every layer) for every `stride`-th l."""
    n = directions.shape[0]
    spans = {"all": range(n), "early": range(n // 2), "late": range(n // 2, n)}
    out = {name: {k: directions[k] for k in layers} for name, layers in spans.items() if layers}
    for layer in range(0, n, stride):
        out[f"from{layer}"] = {k: directions[layer] for k in range(n)}
    return out


@torch.no_grad()
def answer_readiness(lm: LoadedModel, subject: Subject, items: Sequence[QAItem]) -> float:
    """Mean over `items` of the log-probability (nats) that the model's answer starts with
    the reference answer's first token, from the prompt alone (one forward pass, as the first
    step of generation: a method's hooks run as they do when it answers): how ready the model
    is to answer rather than refuse."""
    tok, cfg = lm.tokenizer, subject.config
    total = 0.0
    for chunk in _batches(len(items), cfg.batch_size, "ablation: readiness", False):
        batch = [items[k] for k in chunk]
        inputs = encode_prefilled(
            lm, subject.bench.images(batch), [i.question for i in batch], [""] * len(batch)
        )
        logits = lm.model(**inputs, logits_to_keep=1).logits[:, -1].float()
        logprobs = logits.log_softmax(-1).cpu()
        for row, item in enumerate(batch):
            first = tok(item.answer, add_special_tokens=False)["input_ids"][0]
            total += float(logprobs[row, first])
    return total / len(items)


def orthogonalized(lm: LoadedModel, direction: torch.Tensor) -> LoadedModel:
    """A copy of `lm` whose every residual-stream writer has `direction` projected out of its
    output: the token embeddings' rows, each decoder layer's attention output projection and
    `mlp_out_attr`, and the last linear of each `visual_feature_paths` module (the visual
    tokens' embeddings and DeepStack's additions). W <- (I - u u^T) W, b <- (I - u u^T) b."""
    adapter, model = lm.adapter, lm.model
    hidden = lm.hidden_size
    writers: list[tuple[str, torch.nn.Module]] = [
        (f"{adapter.language_model_path}.{adapter.embed_attr}", adapter.embed_tokens(model))
    ]
    for index in range(lm.num_layers):
        attention = adapter._get(model, adapter.attention_path(index))
        linears = [m for m in attention.modules() if isinstance(m, torch.nn.Linear)]
        if not linears or linears[-1].out_features != hidden:
            raise AuditError(
                f"weight orthogonalisation: the attention block of layer {index} of {lm.name} "
                f"has no output linear of width {hidden}"
            )
        writers.append((f"{adapter.attention_path(index)}.out", linears[-1]))
        writers.append(
            (adapter.mlp_out_path(index), adapter._get(model, adapter.mlp_out_path(index)))
        )
    for path in adapter.visual_feature_paths(model):
        module = adapter._get(model, path)
        linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
        if not linears or linears[-1].out_features != hidden:
            raise AuditError(
                f"weight orthogonalisation: {path} of {lm.name} has no last linear of width "
                f"{hidden}, so the image's tokens would carry the direction in"
            )
        writers.append((path, linears[-1]))
    names = {id(m): n for n, m in model.named_modules()}
    twin = lm.clone(copy_only=[names[id(m)] for _, m in writers])
    twin_modules = dict(twin.model.named_modules())
    u = _unit(direction.double())
    with torch.no_grad():
        for _, module in writers:
            mine = twin_modules[names[id(module)]]
            w = mine.weight
            u_w = u.to(device=w.device)
            if isinstance(mine, torch.nn.Embedding):  # rows are the written vectors
                edited = w.double() - (w.double() @ u_w).unsqueeze(1) * u_w
            else:  # columns: out = W x
                edited = w.double() - torch.outer(u_w, u_w @ w.double())
            w.copy_(edited.to(w.dtype))
            if getattr(mine, "bias", None) is not None:
                b = mine.bias.double()
                mine.bias.copy_((b - (b @ u_w) * u_w).to(mine.bias.dtype))
    return twin


def ablation(
    subject: Subject, reference: LoadedModel | None, baseline: list[dict]
) -> tuple[dict, list[dict]]:
    """The direction-ablation attack (module docstring). Returns per reported variant
    (`per_layer`: the best per-layer candidate, `everywhere`: the best one-direction one,
    `orthogonalized`, `orthogonalized+prefill`, `orthogonalized+relearn`) the held-out half's
    forget and test leak and retain recall (`attacks.leaks`) beside the same questions' leak
    with no attack (`none_forget_leak`, `none_test_leak`); the first two also hold what was
    chosen (kind, position, span) with its leak on the fitted half. `search`: the people of
    each half, every candidate's readiness on the fitted half (`answer_readiness`; and its
    leak there for those asked), or why a kind had none."""
    from . import relearn as relearning  # relearn imports this package's attacks

    cfg, bench = subject.config, subject.bench
    people = forget_people(bench)
    if len(people) < 2:
        why = (
            "direction ablation needs 2 forget people (one half to fit on, one to report on); "
            f"the forget split has {len(people)}"
        )
        return {"per_layer": {"skipped": why}}, []
    fit_people, held_people = relearning.halves(people, cfg.seed)
    fitted, held = set(fit_people), set(held_people)
    fit = sample(
        [i for i in bench.questions("forget", "qa") if i.person_id in fitted],
        cfg.max_items,
        cfg.seed,
        "ablation:fit",
    )
    records: list[dict] = []
    with subject.applied():
        plain = leak_records(
            subject.lm, bench, fit, cfg, attack="ablation_fit_none", desc="ablation: fit half"
        )
    records += plain
    refused = {k for k, r in enumerate(plain) if r["refusal"]}
    retained = [r for r in baseline if r["split"] == "retain"]
    answered = [i for i, r in zip(subject.questions["retain"], retained, strict=True) if r["leak"]]
    directions = fit_directions(subject, reference, fit, refused, answered)
    search: dict = {
        "fit_people": fit_people,
        "held_out_people": held_people,
        "fit_questions": len(fit),
        "fit_none_leak": rate(plain),
        "skipped": {f"{k}@{p}": why for (k, p), why in directions.items() if isinstance(why, str)},
    }
    with subject.applied():
        search["none_readiness"] = answer_readiness(subject.lm, subject, fit)
    tried = [
        (kind, position, span, applied)
        for (kind, position), found in directions.items()
        if not isinstance(found, str)
        for span, applied in candidates(found, cfg.ablation_layer_stride).items()
    ]
    ranked: list[dict] = []
    for kind, position, span, applied in _progress(tried, cfg.progress):
        with subject.applied(), ablated(subject.lm, applied):
            score = answer_readiness(subject.lm, subject, fit)
        ranked.append({"kind": kind, "position": position, "span": span, "readiness": score})
    ranked.sort(key=lambda c: -c["readiness"])
    search["candidates"] = ranked
    if not ranked:
        why = "no candidate direction: " + "; ".join(
            f"{k}: {why}" for k, why in search["skipped"].items()
        )
        return {"per_layer": {"skipped": why, "search": search}}, records
    lookup = {(k, p, s): a for k, p, s, a in tried}

    def best_of(mine: list[dict]) -> dict:
        """The candidate of `mine` (readiness order) that leaks most on the fitted half among
        the first `ablation_top`, each asked there once."""
        best = None
        for candidate in mine[: cfg.ablation_top]:
            if "fit_leak" not in candidate:
                applied = lookup[candidate["kind"], candidate["position"], candidate["span"]]
                name = f"ablation_fit_{_label(candidate)}"
                with subject.applied(), ablated(subject.lm, applied):
                    found = leak_records(subject.lm, bench, fit, cfg, attack=name, desc=name)
                records.extend(found)
                candidate["fit_leak"] = rate(found)
            if best is None or candidate["fit_leak"] > best["fit_leak"]:
                best = candidate
        return best

    held_subject = replace(
        subject,
        questions=_held_out(subject, held),
        mcq={s: [i for i in items if i.person_id in held] for s, items in subject.mcq.items()},
    )
    held_none = _held_out_none(baseline, held)
    out: dict = {}
    for variant, mine in (
        ("per_layer", [c for c in ranked if not c["span"].startswith("from")]),
        ("everywhere", [c for c in ranked if c["span"].startswith("from")]),
    ):
        if not mine:
            continue
        best = best_of(mine)
        key = (best["kind"], best["position"], best["span"])
        asked = ask(
            held_subject,
            (*ATTACKED_SPLITS, "retain"),
            f"ablation_{variant}",
            inside=lambda key=key: ablated(subject.lm, lookup[key]),
        )
        chosen = choice.under(
            held_subject,
            f"ablation_{variant}",
            inside=lambda key=key: ablated(subject.lm, lookup[key]),
        )
        records += asked + chosen
        which = {k: best[k] for k in ("kind", "position", "span", "fit_leak")}
        out[variant] = {**leaks(asked), **choice.accuracy(chosen), **held_none, **which}
        if variant == "everywhere" and cfg.ablation_orthogonalize:
            direction = directions[best["kind"], best["position"]][
                int(best["span"].removeprefix("from"))
            ]
            out.update(_orthogonalized_attacks(held_subject, direction, which, held_none, records))
    out[next(iter(out))]["search"] = search
    return out, records


def _label(candidate: dict) -> str:
    return f"{candidate['kind']}@{candidate['position']}:{candidate['span']}"


def _held_out(subject: Subject, held: set[str]) -> dict[str, list[QAItem]]:
    """The audit's questions of the held-out people (forget and test) and every retain one."""
    questions = {
        split: [i for i in subject.questions[split] if i.person_id in held]
        for split in ATTACKED_SPLITS
    }
    questions["retain"] = subject.questions["retain"]
    return questions


def _held_out_none(baseline: list[dict], held: set[str]) -> dict:
    """The no-attack leak of the held-out people's questions (from the audit's baseline)."""
    out = {}
    for split in ATTACKED_SPLITS:
        mine = [r for r in baseline if r["split"] == split and r["person_id"] in held]
        out[f"none_{split}_leak"] = rate(mine) if mine else None
    return out


def _orthogonalized_attacks(
    held_subject: Subject, direction: torch.Tensor, which: dict, held_none: dict, records: list
) -> dict:
    """Plain answers, prefill and relearning on the copy with `direction` orthogonalised out
    of its weights (`orthogonalized`), each on the held-out half."""
    from . import relearn as relearning

    cfg = held_subject.config
    twin = orthogonalized(held_subject.lm, direction)
    subject = replace(held_subject, lm=twin)
    out: dict = {}
    asked = ask(subject, (*ATTACKED_SPLITS, "retain"), "ablation_orthogonalized")
    chosen = choice.under(subject, "ablation_orthogonalized")
    records += asked + chosen
    out["orthogonalized"] = {**leaks(asked), **choice.accuracy(chosen), **held_none, **which}
    found, mine = prefill(subject, variants=("name",))
    records += [{**r, "attack": f"ablation_orthogonalized+{r['attack']}"} for r in mine]
    out["orthogonalized+prefill"] = {
        k: v for k, v in found.items() if k.endswith(("_leak", "_refusal")) or k.startswith("n_")
    }
    mode = cfg.relearn_modes[0]
    lr = (cfg.relearn_lr if mode == "lora" else cfg.relearn_full_lr)[0]
    one = replace(
        cfg,
        relearn_modes=(mode,),
        relearn_lr=(lr,),
        relearn_full_lr=(lr,),
        relearn_data=("forget",),
    )
    plain = [r for r in asked if r["split"] == "retain"]
    found, mine = relearning.relearn(replace(subject, config=one), plain, None)
    records += [{**r, "attack": f"ablation_orthogonalized+{r['attack']}"} for r in mine]
    (setting,) = found["settings"]
    curve = setting["curves"]["forget"]
    taught = curve[-1].get("taught_leak")
    block: dict = {
        "setting": setting["name"],
        "curve": curve,
        "taught_leak": taught,
        "retain_recall": curve[-1].get("retain_recall"),
    }
    if setting.get("diverged"):
        block["void"] = "the fine-tune diverged: " + "; ".join(setting["diverged"].values())
    elif taught is None or taught < relearning.CONTROL_LEAK:
        shown = "none" if taught is None else f"{taught:.2f}"
        block["void"] = (
            f"the taught half was not relearned (taught leak {shown} < {relearning.CONTROL_LEAK:g})"
        )
    else:
        worst = max(curve, key=lambda p: p.get("forget_leak") or 0.0)
        block.update(
            forget_leak=worst.get("forget_leak"), test_leak=worst.get("test_leak"), k=worst["steps"]
        )
    out["orthogonalized+relearn"] = block
    return out


def _progress(items: list, show: bool):
    if not show:
        return items
    from asru_lab.progress import tqdm

    return tqdm(items, desc="ablation: candidates", leave=False)
