"""Reading forgotten facts without asking for them: linear probes on the hidden states, the
logit lens, and membership inference from the reference answers' likelihood.

None of these generates text. They ask whether the fact is still *in* the model, where the
generation attacks ask whether it can be made to *say* it.
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch

from asru_lab.data.schema import QAItem
from asru_lab.directions import auroc
from asru_lab.evaluation.probability import answer_logprobs
from asru_lab.generation import build_prompt, fact_prefix, fact_token
from asru_lab.models.loading import LoadedModel

from .attacks import ATTACKED_SPLITS, Subject
from .config import AuditError
from .measure import last_states, lens_ranks, sample

# --- linear-probe extraction ------------------------------------------------------------------


PROBE_STEPS = 300  # full-batch Adam steps of the linear probe
PROBE_LR = 0.05


def _fit_predict(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, classes: int, l2: float
) -> torch.Tensor:
    """Multinomial logistic regression on standardised features (L2 penalty `l2` on the
    weights; `PROBE_STEPS` full-batch Adam steps from zero, so the same data give the same
    probe); the predicted class of each test row."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    x, t = (train_x - mean) / std, (test_x - mean) / std
    weight = torch.zeros(x.shape[1], classes, dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(classes, dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=PROBE_LR)
    with torch.enable_grad():
        for _ in range(PROBE_STEPS):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(x @ weight + bias, train_y)
            (loss + l2 * weight.pow(2).sum()).backward()
            optimizer.step()
    with torch.no_grad():
        return (t @ weight + bias).argmax(-1)


def probe_items(subject: Subject) -> tuple[list[QAItem], list[QAItem]]:
    """(retain image questions about the probed attribute: the training set, forget and test
    image questions about it: the test set, at most `max_items` of each split, seeded as every
    other measurement's sample)."""
    attr = subject.config.probe_attribute
    bench = subject.bench

    def about(split: str) -> list[QAItem]:
        return [i for i in bench.questions(split, "qa", image_only=True) if i.attribute == attr]

    cfg = subject.config
    train = about("retain")
    test = [
        i
        for split in ATTACKED_SPLITS
        for i in sample(about(split), cfg.max_items, cfg.seed, f"probe:{split}")
    ]
    if not train or not test:
        known = sorted({i.attribute for i in bench.questions("forget", "qa")})
        raise AuditError(
            f"linear-probe extraction: no image questions about {attr!r} in the "
            f"{'retain' if not train else 'forget/test'} split; AuditConfig.probe_attribute "
            f"must be one of the forget split's attributes: {known}"
        )
    return train, test


def probe_accuracy(
    subject: Subject, lm: LoadedModel, applied=nullcontext
) -> tuple[list[float], dict]:
    """Per layer, the accuracy on the forget people of a linear probe trained on retain people's
    hidden states to predict the attribute's value; and the floor (the best constant guess).

    The states are read where the fact is about to be said: an image question about the
    attribute, then the reference answer's words before the fact, teacher-forced ("... was born
    in"). (At the last prompt token the model is about to say the name, not the fact.)"""
    cfg = subject.config
    train, test = probe_items(subject)
    train = sample(train, 8 * cfg.max_items, cfg.seed, "probe:train")
    with applied():
        xs = [
            last_states(
                lm,
                subject.bench,
                items,
                prefixes=[fact_prefix(i.answer, i.value)[0] for i in items],
                batch_size=cfg.batch_size,
                progress=cfg.progress,
                desc=f"probe states: {name}",
            ).double()
            for name, items in (("retain", train), ("forget", test))
        ]
    values = sorted({i.value for i in train})
    index = {v: k for k, v in enumerate(values)}
    train_y = torch.tensor([index[i.value] for i in train])
    test_y = torch.tensor([index.get(i.value, -1) for i in test])  # -1: never a probe's answer
    accuracy = []
    for layer in range(xs[0].shape[1]):
        predicted = _fit_predict(
            xs[0][:, layer], train_y, xs[1][:, layer], len(values), cfg.probe_l2
        )
        accuracy.append(float((predicted == test_y).double().mean()))
    counts = torch.bincount(test_y[test_y >= 0], minlength=len(values))
    return accuracy, {
        "chance": float(counts.max()) / len(test) if len(counts) else 0.0,
        "n_train": len(train),
        "n_test": len(test),
        "classes": len(values),
        "test_values_unseen_in_training": int((test_y < 0).sum()),
    }


def linear_probe(
    subject: Subject, reference: LoadedModel | None, oracle: LoadedModel | None
) -> tuple[dict, list[dict]]:
    """Linear-probe extraction on the audited model, with the floor (chance; the oracle) and
    the ceiling (the reference, the model before unlearning) measured the same way."""
    accuracy, info = probe_accuracy(subject, subject.lm, subject.applied)
    out = {"attribute": subject.config.probe_attribute, "accuracy": accuracy, **info}
    out["best"] = max(accuracy)
    out["best_layer"] = accuracy.index(out["best"])
    for name, model in (("reference", reference), ("oracle", oracle)):
        if model is not None:
            acc, _ = probe_accuracy(subject, model)
            out[f"{name}_accuracy"], out[f"{name}_best"] = acc, max(acc)
    return out, []


# --- logit lens -------------------------------------------------------------------------------


def logit_lens(subject: Subject) -> tuple[dict, list[dict]]:
    """Per layer, the rank of the fact's first token in the logit lens at the position that
    should say it (after the reference answer's words before the fact, teacher-forced); the
    share of questions where it is in the top `lens_top_k` at some layer."""
    cfg, lm = subject.config, subject.lm
    out: dict = {"top_k": cfg.lens_top_k}
    records: list[dict] = []
    for split in ATTACKED_SPLITS:
        items, prefixes, targets = [], [], []
        for item in subject.questions[split]:
            prefix, fact = fact_prefix(item.answer, item.value)
            target = fact_token(lm, build_prompt(lm, item.question, item.has_image), prefix, fact)
            if target is not None:
                items.append(item)
                prefixes.append(prefix)
                targets.append(target)
        if not items:
            continue
        with subject.applied():
            states = last_states(
                lm,
                subject.bench,
                items,
                prefixes=prefixes,
                batch_size=cfg.batch_size,
                progress=cfg.progress,
                desc=f"logit lens: {split}",
            )
        ranks = lens_ranks(lm, states, targets)
        found = (ranks < cfg.lens_top_k).any(dim=1)
        out[split] = {
            "found_share": float(found.double().mean()),
            "top_k_share_per_layer": (ranks < cfg.lens_top_k).double().mean(0).tolist(),
            "median_rank_per_layer": ranks.double().median(0).values.tolist(),
            "n": len(items),
            "left_out_merged_tokens": len(subject.questions[split]) - len(items),
        }
        for item, prefix, row in zip(items, prefixes, ranks.tolist(), strict=True):
            records.append(
                {
                    "attack": "logit_lens",
                    "split": split,
                    "person_id": item.person_id,
                    "question": item.question,
                    "prefix": prefix,
                    "value": item.value,
                    "ranks": row,
                }
            )
    return out, records


# --- membership inference ---------------------------------------------------------------------


def non_members(subject: Subject) -> list[QAItem]:
    """Never-seen people's questions with answers written as the forget people's are: a forget
    answer of the same attribute with the name and the fact swapped for the unseen person's
    (their reference answers are refusals, which say nothing of membership)."""
    bench = subject.bench
    templates: dict[str, QAItem] = {}
    for item in bench.questions("forget", "qa"):
        templates.setdefault(item.attribute, item)
    out = []
    for item in bench.questions("unseen", "qa", image_only=True):
        template = templates.get(item.attribute)
        person = bench.people.get(item.person_id) if item.person_id else None
        if template is None or person is None:
            continue
        owner = bench.people[template.person_id]
        answer = template.answer.replace(owner.name, person.name)
        answer = answer.replace(fact_prefix(template.answer, template.value)[1], item.value)
        out.append(
            QAItem(
                "unseen",
                "qa",
                item.person_id,
                item.image,
                item.question,
                answer,
                item.attribute,
                item.value,
            )
        )
    return out


def _scores(subject: Subject, lm: LoadedModel, items, applied, desc: str) -> dict[str, list]:
    cfg = subject.config
    with applied():
        logps = answer_logprobs(
            lm,
            subject.bench,
            items,
            [i.answer for i in items],
            batch_size=cfg.batch_size,
            progress=cfg.progress,
            desc=desc,
        )
    loss, mink = [], []
    for lp in logps:
        loss.append(-float(lp.mean()))
        k = max(1, math.ceil(cfg.mink_fraction * len(lp)))
        mink.append(-float(lp.sort().values[:k].mean()))
    return {"loss": loss, "mink": mink}


def membership(subject: Subject, oracle: LoadedModel | None) -> tuple[dict, list[dict]]:
    """Membership inference: AUC of telling the forget questions (members) from never-seen
    people's (non-members) by the reference answer's loss (mean token NLL) and by min-k %
    (the mean of the k % lowest token log-probs); 1 = every member found, 0.5 = chance. With
    the oracle, privleak = ((1 - AUC) - (1 - AUC_oracle)) / (1 - AUC_oracle) * 100 (0: as the
    oracle; negative: more recognisable than never-seen people)."""
    cfg = subject.config
    # image questions on both sides (the never-seen people are only ever shown)
    members = subject.bench.questions("forget", "qa", image_only=True)
    members = sample(members, cfg.max_items, cfg.seed, "mia:in")
    outsiders = sample(non_members(subject), cfg.max_items, cfg.seed, "mia:out")
    if not outsiders:
        return {"skipped": "the benchmark has no never-seen people (split 'unseen')"}, []
    out: dict = {"n_members": len(members), "n_non_members": len(outsiders)}
    models = [("audited", subject.lm, subject.applied)]
    if oracle is not None:
        models.append(("oracle", oracle, nullcontext))
    records: list[dict] = []
    for name, model, applied in models:
        inside = _scores(subject, model, members, applied, f"membership: {name}, members")
        outside = _scores(subject, model, outsiders, applied, f"membership: {name}, others")
        for kind in ("loss", "mink"):
            # a lower loss means "seen": the score is minus the loss
            auc = auroc(-torch.tensor(inside[kind]), -torch.tensor(outside[kind]))
            out[f"{kind}_auc" if name == "audited" else f"oracle_{kind}_auc"] = auc
        if name == "audited":
            groups = (("member", members, inside), ("non_member", outsiders, outside))
            for group, items, scores in groups:
                records += [
                    {
                        "attack": "membership",
                        "group": group,
                        "person_id": item.person_id,
                        "answer": item.answer,
                        "loss": scores["loss"][k],
                        "mink": scores["mink"][k],
                    }
                    for k, item in enumerate(items)
                ]
    if oracle is not None:
        for kind in ("loss", "mink"):
            ref = 1 - out[f"oracle_{kind}_auc"]
            out[f"{kind}_privleak"] = ((1 - out[f"{kind}_auc"]) - ref) / ref * 100 if ref else None
    return out, records
