"""Reading forgotten facts without asking for them: linear probes on the hidden states, the
logit lens, and membership inference from the reference answers' likelihood.

None of these generates text. They ask whether the fact is still *in* the model, where the
generation attacks ask whether it can be made to *say* it.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from contextlib import nullcontext

import torch

from asru_lab.data.schema import QAItem
from asru_lab.directions import auroc
from asru_lab.evaluation.probability import AnswerTokenStats, answer_token_stats
from asru_lab.generation import build_prompt, fact_prefix, fact_token
from asru_lab.models.loading import LoadedModel
from asru_lab.training import Example, answer_tokens

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


# the scores of a scored text, each lower for a likelier (more member-like) text
SCORES = ("loss", "mink", "minkpp", "zlib")
SIGMA_FLOOR = 1e-12  # a next-token distribution sure of one token: no spread to divide by


def lowest_mean(values: torch.Tensor, fraction: float) -> float:
    """The mean of the `fraction` lowest of `values` (ceil(fraction * n) of them, at least
    one)."""
    k = max(1, math.ceil(fraction * len(values)))
    return float(values.sort().values[:k].mean())


def zlib_bytes(text: str) -> int:
    """The length in bytes of `text` (UTF-8) compressed by zlib at its default level."""
    return len(zlib.compress(text.encode("utf-8")))


def text_scores(stats: AnswerTokenStats, text: str, fraction: float) -> dict[str, float]:
    """`SCORES` of one scored `text` from its tokens' `stats` (nats): `loss`, the mean token
    NLL; `mink`, minus the mean of the `fraction` lowest token log-probs; `minkpp`, minus the
    mean of the `fraction` lowest Min-K%++ token scores (log p(x_t) - mu_t) / sigma_t; `zlib`,
    `loss` over `zlib_bytes(text)`."""
    loss = -float(stats.logprob.mean())
    calibrated = (stats.logprob - stats.mean) / stats.std.clamp_min(SIGMA_FLOOR)
    return {
        "loss": loss,
        "mink": -lowest_mean(stats.logprob, fraction),
        "minkpp": -lowest_mean(calibrated, fraction),
        "zlib": loss / zlib_bytes(text),
    }


def fact_spans(lm: LoadedModel, items: Sequence[QAItem]) -> list[tuple[int, int] | None]:
    """Per item, (first, end) among its answer's scored tokens (`answer_logprobs`' tokens:
    the answer tokenised after its prompt, the end of turn left out) of the tokens that spell
    its `value`: those whose characters overlap the value where `fact_prefix` finds it in the
    answer (a token merging the value with a neighbouring character counts). None when the
    answer does not contain the value."""
    tok = lm.tokenizer
    if not tok.is_fast:
        raise AuditError(
            f"membership inference over the fact's tokens needs each token's characters, which "
            f"only a fast tokenizer gives; {lm.name} has a {type(tok).__name__}"
        )
    eos = tok.eos_token or ""
    tails, _ = answer_tokens(lm, [Example(i.image, i.question, i.answer) for i in items])
    spans: list[tuple[int, int] | None] = []
    for item, tail in zip(items, tails, strict=True):
        at = item.answer.lower().find(item.value.lower())
        if not item.value or at < 0:
            spans.append(None)
            continue
        prompt = build_prompt(lm, item.question, item.has_image)
        text = tok(
            prompt + item.answer + eos, add_special_tokens=False, return_offsets_mapping=True
        )
        offsets = text["offset_mapping"][-len(tail) :][:-1]  # the answer's, without its eos
        start, end = len(prompt) + at, len(prompt) + at + len(item.value)
        inside = [k for k, (a, b) in enumerate(offsets) if a < end and b > start]
        spans.append((inside[0], inside[-1] + 1) if inside else None)
    return spans


def item_scores(
    stats: AnswerTokenStats, item: QAItem, span: tuple[int, int] | None, fraction: float
) -> dict[str, float | None]:
    """`text_scores` of `item`'s whole answer, and (`fact_*`, None without a `span`) of the
    answer's tokens in `span` alone, with the value as the answer spells it as their text."""
    fact = dict.fromkeys(SCORES)
    if span is not None:
        value = fact_prefix(item.answer, item.value)[1]
        fact = text_scores(AnswerTokenStats(*(t[slice(*span)] for t in stats)), value, fraction)
    whole = text_scores(stats, item.answer, fraction)
    return {**whole, **{f"fact_{kind}": score for kind, score in fact.items()}}


def add_reference(rows: list[dict], oracle_rows: list[dict]) -> None:
    """Give each of `rows` (`item_scores`) its `reference` and `fact_reference` scores: its
    loss minus the oracle's on the same answer (`oracle_rows`, in the same order)."""
    for row, base in zip(rows, oracle_rows, strict=True):
        for part in ("", "fact_"):
            loss = row[f"{part}loss"]
            row[f"{part}reference"] = None if loss is None else loss - base[f"{part}loss"]


def score_auc(members: list[dict], others: list[dict], kind: str) -> float | None:
    """AUC of telling `members` from `others` by their `kind` score (lower: seen), the rows
    without one left out; None when a side has none."""
    inside, outside = (
        [-r[kind] for r in rows if r[kind] is not None] for rows in (members, others)
    )
    if not inside or not outside:
        return None
    return auroc(
        torch.tensor(inside, dtype=torch.float64), torch.tensor(outside, dtype=torch.float64)
    )


def privleak(auc: float | None, oracle_auc: float | None) -> float | None:
    """((1 - AUC) - (1 - AUC_oracle)) / (1 - AUC_oracle) * 100: 0 as the oracle, negative
    more recognisable; None without both AUCs or when the oracle's is 1."""
    if auc is None or oracle_auc is None or oracle_auc == 1:
        return None
    return ((1 - auc) - (1 - oracle_auc)) / (1 - oracle_auc) * 100


def membership(subject: Subject, oracle: LoadedModel | None) -> tuple[dict, list[dict]]:
    """Membership inference: AUC of telling the forget questions (members) from never-seen
    people's (non-members, `non_members`) by a score of the reference answer; 1 = every member
    found, 0.5 = chance. Every score is lower for a likelier, more member-like answer:

    - `loss`: the mean token NLL (LOSS, Yeom et al. 2018);
    - `mink`: Min-K% (Shi et al. 2024), minus the mean of the `mink_fraction` lowest token
      log-probs;
    - `minkpp`: Min-K%++ (Zhang et al. 2024), the same over each token's log-prob calibrated
      by the model's own next-token distribution there, (log p(x_t) - mu_t) / sigma_t with
      mu_t = sum_v p(v) log p(v) and sigma_t^2 = sum_v p(v) log p(v)^2 - mu_t^2;
    - `zlib`: the loss over the answer's zlib-compressed length in bytes (Carlini et al. 2021);
    - `reference`: the loss minus the retrain oracle's loss on the same answer (Carlini et al.
      2021's reference model; the oracle never saw the forget people). Skipped without an
      oracle (`reference_skipped` says why).

    Each is computed over the whole answer (`loss_auc`, ...: "Alma Aldous was born in Oslo.",
    whose name alone gives membership away) and over the tokens that spell the fact alone
    (`fact_loss_auc`, ...: " Oslo", `fact_spans`; `zlib` then divides by the value's
    compressed length; `n_fact_members` / `n_fact_non_members` answers contain their value).
    With the oracle, its own AUC under each score (`oracle_loss_auc`, ...; 0.5 for
    `reference`, by construction) and privleak = ((1 - AUC) - (1 - AUC_oracle)) /
    (1 - AUC_oracle) * 100 (`loss_privleak`, ...; 0: as the oracle; negative: more
    recognisable than never-seen people). The records hold every answer's scores."""
    cfg = subject.config
    # image questions on both sides (the never-seen people are only ever shown)
    members = subject.bench.questions("forget", "qa", image_only=True)
    members = sample(members, cfg.max_items, cfg.seed, "mia:in")
    outsiders = sample(non_members(subject), cfg.max_items, cfg.seed, "mia:out")
    if not outsiders:
        return {"skipped": "the benchmark has no never-seen people (split 'unseen')"}, []
    groups = {"member": members, "non_member": outsiders}
    spans = {group: fact_spans(subject.lm, items) for group, items in groups.items()}
    out: dict = {
        "n_members": len(members),
        "n_non_members": len(outsiders),
        "n_fact_members": sum(s is not None for s in spans["member"]),
        "n_fact_non_members": sum(s is not None for s in spans["non_member"]),
    }
    models = {"audited": (subject.lm, subject.applied)}
    if oracle is not None:
        models["oracle"] = (oracle, nullcontext)
    scores: dict[str, dict[str, list[dict]]] = {}
    for name, (model, applied) in models.items():
        scores[name] = {}
        for group, items in groups.items():
            with applied():
                stats = answer_token_stats(
                    model,
                    subject.bench,
                    items,
                    [i.answer for i in items],
                    batch_size=cfg.batch_size,
                    progress=cfg.progress,
                    desc=f"membership: {name}, {group}s",
                )
            scores[name][group] = [
                item_scores(s, item, span, cfg.mink_fraction)
                for s, item, span in zip(stats, items, spans[group], strict=True)
            ]
    kinds = [*SCORES, *(f"fact_{kind}" for kind in SCORES)]
    if oracle is None:
        out["reference_skipped"] = (
            "no retrain oracle given: the reference attack compares the audited model's loss "
            "with the oracle's (audit(..., oracle=load_oracle()))"
        )
    else:
        kinds += ["reference", "fact_reference"]
        for rows in scores.values():
            for group in groups:
                add_reference(rows[group], scores["oracle"][group])
    for name, rows in scores.items():
        for kind in kinds:
            auc = score_auc(rows["member"], rows["non_member"], kind)
            out[f"{kind}_auc" if name == "audited" else f"oracle_{kind}_auc"] = auc
    if oracle is not None:
        for kind in kinds:
            out[f"{kind}_privleak"] = privleak(out[f"{kind}_auc"], out[f"oracle_{kind}_auc"])
    records = [
        {
            "attack": "membership",
            "group": group,
            "person_id": item.person_id,
            "answer": item.answer,
            "value": item.value,
            **row,
        }
        for group, items in groups.items()
        for item, row in zip(items, scores["audited"][group], strict=True)
    ]
    return out, records
