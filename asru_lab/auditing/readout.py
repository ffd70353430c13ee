"""Reading forgotten facts without asking for them: linear probes on the hidden states, the
logit lens, and membership inference from the reference answers' likelihood.

None of these generates text. They ask whether the fact is still *in* the model, where the
generation attacks ask whether it can be made to *say* it.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cached_property

import torch

from asru_lab.data.schema import Benchmark, QAItem
from asru_lab.directions import auroc
from asru_lab.evaluation.probability import AnswerTokenStats, answer_token_stats
from asru_lab.generation import build_prompt, fact_prefix, fact_token
from asru_lab.models.loading import LoadedModel
from asru_lab.training import Example, answer_tokens

from .attacks import ATTACKED_SPLITS, Subject
from .config import AuditConfig, AuditError
from .measure import lens_logits, lens_ranks, position_states, sample

# --- what the readouts read -------------------------------------------------------------------

# where an entity is read with no name prefix to lean on (`measure.position_states`): the mean
# of the image's tokens, the last token of the name in a question by name, the prompt's last
ENTITY_POSITIONS = ("image", "name", "last_prompt")


def fact_attributes(bench: Benchmark) -> list[str]:
    """The attributes of the forget people's facts, in the order their facts list them (the
    synthetic benchmark's five: birthplace, occupation, birth_year, hobby, pet)."""
    found: dict[str, None] = {}
    for person in bench.people_in("forget"):
        found.update(dict.fromkeys(person.facts))
    return list(found)


def readout_items(
    bench: Benchmark, split: str, n: int | None, seed: int, attributes: Sequence[str]
) -> list[QAItem]:
    """At most `n` generation questions of `split` about the people's `attributes`: a seeded
    sample of `n // 2` questions by name (no image) and the rest image questions (all image
    questions where there are too few by name); every one for `n` None."""
    about = [
        i
        for i in bench.questions(split, "qa")
        if i.attribute in attributes and i.person_id in bench.people
    ]
    if n is None:
        return about
    named = sample([i for i in about if not i.has_image], n // 2, seed, f"readout:{split}:name")
    shown = [i for i in about if i.has_image]
    return sample(shown, n - len(named), seed, f"readout:{split}:image") + named


def probe_items(bench: Benchmark, config: AuditConfig) -> tuple[list[QAItem], list[QAItem]]:
    """(the linear probes' training questions: `readout_items` of the retain split, 8 x
    `max_items`; their test questions: `readout_items` of each attacked split, `max_items`
    each). The probes learn from people outside the audited set only: no forget person's
    question is ever in the training set."""
    attributes = probed_attributes(bench, config)
    train = readout_items(bench, "retain", 8 * config.retain_n, config.seed, attributes)
    test = [
        item
        for split in ATTACKED_SPLITS
        for item in readout_items(bench, split, config.max_items, config.seed, attributes)
    ]
    if not train or not test:
        raise AuditError(
            f"linear-probe extraction: no questions about {attributes} in the "
            f"{'retain' if not train else 'forget/test'} split of {bench.name}"
        )
    return train, test


def probed_attributes(bench: Benchmark, config: AuditConfig) -> list[str]:
    """The fact attributes the linear probes read: `AuditConfig.probe_attribute` alone when it
    is set, else every one of `fact_attributes`."""
    known = fact_attributes(bench)
    wanted = config.probe_attribute
    if wanted is None:
        return known
    if wanted not in known:
        raise AuditError(
            f"AuditConfig.probe_attribute is {wanted!r}, which is none of the forget people's "
            f"facts: give one of {known}, or None for all of them"
        )
    return [wanted]


# --- linear-probe extraction ------------------------------------------------------------------


def _fit_predict(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, classes: int, l2: float
) -> torch.Tensor:
    """A least-squares (ridge) linear classifier on standardised features: W minimises
    mean ||x W + b - onehot(y)||^2 + `l2` ||W||^2 over the training rows, in closed form (the
    same data give the same probe; milliseconds, where 300 steps of logistic regression took
    half a second a probe, 2 minutes an audit); the predicted class (the highest score) of
    each test row."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    ones = torch.ones(len(train_x), 1, dtype=train_x.dtype)
    x = torch.cat([(train_x - mean) / std, ones], dim=1)
    t = torch.cat([(test_x - mean) / std, torch.ones(len(test_x), 1, dtype=x.dtype)], dim=1)
    penalty = l2 * len(x) * torch.eye(x.shape[1], dtype=x.dtype)
    penalty[-1, -1] = 0.0  # the bias is not penalised
    target = torch.nn.functional.one_hot(train_y, classes).to(x.dtype)
    # least squares: a singular system (no penalty, fewer rows than features) has a solution
    weight = torch.linalg.lstsq(x.T @ x + penalty, x.T @ target).solution
    return (t @ weight).argmax(-1)


def probe_scores(
    train_x: torch.Tensor,
    train_values: Sequence[str | None],
    test_x: torch.Tensor,
    test_values: Sequence[str | None],
    l2: float,
) -> tuple[list[float], float]:
    """(per layer, the accuracy on the test rows (`test_x` `[m, n_layers, D]`) of a linear
    probe (`_fit_predict`) trained on the training rows (`train_x` `[n, n_layers, D]`) to
    predict their `train_values`; the accuracy of always answering the commonest training
    value). Training rows without a value (None) are left out; a test value never seen in
    training counts as a miss."""
    kept = [k for k, v in enumerate(train_values) if v is not None]
    values = sorted({train_values[k] for k in kept})
    if not values:
        return [0.0] * test_x.shape[1], 0.0
    index = {v: k for k, v in enumerate(values)}
    train_y = torch.tensor([index[train_values[k]] for k in kept])
    test_y = torch.tensor([index.get(v, -1) for v in test_values])
    x, t = train_x[kept].double(), test_x.double()
    accuracy = [
        float((_fit_predict(x[:, i], train_y, t[:, i], len(values), l2) == test_y).double().mean())
        for i in range(t.shape[1])
    ]
    commonest = int(torch.bincount(train_y, minlength=len(values)).argmax())
    return accuracy, float((test_y == commonest).double().mean())


def probe_accuracy(
    subject: Subject,
    lm: LoadedModel,
    train: Sequence[QAItem],
    test: Sequence[QAItem],
    applied=nullcontext,
) -> dict[str, dict]:
    """Per entity position (`ENTITY_POSITIONS`): per probed attribute and layer, the accuracy
    on the `test` questions' people of a linear probe trained on the `train` questions'
    people's states there to predict that person's value of the attribute (`probe_scores`;
    `accuracy_by_attribute`), their mean per layer (`accuracy`) and its best layer, and
    `most_frequent_label_accuracy`, that of always answering the commonest training value
    (mean over the attributes)."""
    cfg, bench = subject.config, subject.bench
    attributes = probed_attributes(bench, cfg)
    with applied():
        read = {
            name: position_states(
                lm,
                bench,
                items,
                batch_size=cfg.batch_size,
                progress=cfg.progress,
                desc=f"probe states: {name}",
            )
            for name, items in (("retain", train), ("forget", test))
        }

    def facts(items: Sequence[QAItem], rows: torch.Tensor, attribute: str) -> list[str | None]:
        return [bench.people[items[k].person_id].facts.get(attribute) for k in rows.tolist()]

    out: dict[str, dict] = {}
    for where in ENTITY_POSITIONS:
        (train_rows, train_x), (test_rows, test_x) = read["retain"][where], read["forget"][where]
        if len(train_rows) < 2 or not len(test_rows):
            out[where] = {"n_train": len(train_rows), "n_test": len(test_rows)}
            continue
        scores = {
            a: probe_scores(
                train_x,
                facts(train, train_rows, a),
                test_x,
                facts(test, test_rows, a),
                cfg.probe_l2,
            )
            for a in attributes
        }
        by_attribute = {a: accuracy for a, (accuracy, _) in scores.items()}
        accuracy = torch.tensor(list(by_attribute.values()), dtype=torch.float64).mean(0).tolist()
        out[where] = {
            "accuracy": accuracy,
            "best": max(accuracy),
            "best_layer": accuracy.index(max(accuracy)),
            "accuracy_by_attribute": by_attribute,
            "most_frequent_label_accuracy": sum(c for _, c in scores.values()) / len(scores),
            "n_train": len(train_rows),
            "n_test": len(test_rows),
        }
    return out


def linear_probe(
    subject: Subject, reference: LoadedModel | None, oracle: LoadedModel | None
) -> tuple[dict, list[dict]]:
    """Linear-probe extraction: can a forget person's facts be read, linearly, where the model
    holds the person and has not been told the answer's first words? `positions[where]`
    (`probe_accuracy`) for the audited model, with `reference_accuracy` / `reference_best`
    (the model before unlearning, the ceiling) and `oracle_accuracy` / `oracle_best` (the
    retrain oracle, the floor) measured by the identical probe on the same questions. The
    probes train on retain people (`probe_items`: never a forget person) and are scored on
    the forget people's forget and test questions.

    The top level sums it up for the figures: per layer, the highest accuracy over the
    positions (`accuracy`; `reference_accuracy`, `oracle_accuracy` alike), its best (`best`,
    `best_layer`, `best_position`) and `chance`, the most-frequent-label accuracy at
    `best_position` (the best constant guess).

    Measured on the embedded model (max_items 64, seed 0; 14-16 s on one thread with the
    reference and the oracle, forward passes of 640 questions per model, where the old probe
    took 33 s): the entity positions
    hold no fact that a probe trained on other people can read. Best-layer accuracy, vanilla /
    oracle / most frequent label: image 0.04 / 0.09 / 0.08, name 0.06 / 0.07 / 0.00, last
    prompt token 0.05 / 0.05 / 0.06 (the old probe, after "Alma Aldous was born in", read 0.73
    at the last layer: the prefill, again). The tiny model looks a fact up where it says it,
    which the pool logit lens reads (`logit_lens`); the probes stay for models that write
    facts into the person's representation."""
    train, test = probe_items(subject.bench, subject.config)
    attributes = probed_attributes(subject.bench, subject.config)
    positions = probe_accuracy(subject, subject.lm, train, test, subject.applied)
    for name, model in (("reference", reference), ("oracle", oracle)):
        if model is None:
            continue
        for where, block in probe_accuracy(subject, model, train, test).items():
            if "accuracy" in block:
                positions[where][f"{name}_accuracy"] = block["accuracy"]
                positions[where][f"{name}_best"] = block["best"]
    read = {where: block for where, block in positions.items() if "accuracy" in block}
    out: dict = {
        "attribute": ", ".join(attributes),  # the figures' title names it
        "attributes": attributes,
        "positions": positions,
        "n_train": len(train),
        "n_test": len(test),
    }
    if not read:
        return out, []
    for key in ("accuracy", "reference_accuracy", "oracle_accuracy"):
        curves = [block[key] for block in read.values() if key in block]
        if curves:
            out[key] = torch.tensor(curves, dtype=torch.float64).max(0).values.tolist()
    out["best"] = max(out["accuracy"])
    out["best_layer"] = out["accuracy"].index(out["best"])
    out["best_position"] = max(read, key=lambda where: read[where]["best"])
    out["chance"] = read[out["best_position"]]["most_frequent_label_accuracy"]
    for name in ("reference", "oracle"):
        if f"{name}_accuracy" in out:
            out[f"{name}_best"] = max(out[f"{name}_accuracy"])
    return out, []


# --- logit lens -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValuePool:
    """The values an attribute can take, as the pool logit lens ranks them: each value by its
    first token after a space (as an answer says it: "born in Lisbon"). Values that share a
    first token are one candidate (the lens cannot tell them apart; `shared`), and a value of
    several tokens is ranked by its first (`multi_token`)."""

    attribute: str
    values: tuple[str, ...]
    first_tokens: tuple[int, ...]  # one per value
    multi_token: int  # values longer than their first token

    @cached_property
    def tokens(self) -> torch.Tensor:
        """long `[P]`: the candidates, the distinct first tokens (sorted)."""
        return torch.tensor(sorted(set(self.first_tokens)))

    @property
    def shared(self) -> int:
        """How many values share their first token with another value."""
        counts = Counter(self.first_tokens)
        return sum(counts[t] > 1 for t in self.first_tokens)

    @cached_property
    def _by_value(self) -> dict[str, int]:
        return dict(zip(self.values, self.first_tokens, strict=True))

    def token(self, value: str | None) -> int | None:
        """The candidate token of `value` (None for a value outside the pool)."""
        return self._by_value.get(value) if value is not None else None

    def info(self) -> dict:
        return {
            "values": len(self.values),
            "candidates": len(self.tokens),
            "values_sharing_a_first_token": self.shared,
            "values_of_several_tokens": self.multi_token,
        }


def value_pools(lm: LoadedModel, bench: Benchmark) -> dict[str, ValuePool]:
    """Per fact attribute (`fact_attributes`) with at least two candidates, its `ValuePool`:
    every value the benchmark knows for it (`Benchmark.value_pools`: the synthetic world's
    16-52 per attribute, each its own token in the embedded vocabulary)."""
    tok = lm.tokenizer
    known = bench.value_pools()
    pools = {}
    for attribute in fact_attributes(bench):
        values = tuple(sorted(known.get(attribute, ())))
        ids = [tok(" " + v, add_special_tokens=False)["input_ids"] for v in values]
        pool = ValuePool(
            attribute,
            tuple(v for v, t in zip(values, ids, strict=True) if t),
            tuple(t[0] for t in ids if t),
            sum(len(t) > 1 for t in ids),
        )
        if len(pool.tokens) >= 2:  # a single candidate is always ranked first
            pools[attribute] = pool
    return pools


def pool_ranks(logits: torch.Tensor, pools: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """long `[n]`: each row's rank (0 = top) of its target token among its pool's tokens by
    logit. `logits` `[n, tokens]`; `pools` long `[n, P]`, each row's candidate tokens padded
    with -1; `targets` long `[n]`, each among its row's candidates. A candidate tied with the
    target does not rank above it (as `measure.lens_ranks`)."""
    scores = logits.gather(1, pools.clamp_min(0))
    above = scores > logits.gather(1, targets.view(-1, 1))
    return (above & (pools >= 0)).sum(1)


def pool_scores(ranks: torch.Tensor, sizes: torch.Tensor) -> dict:
    """The pool lens' numbers from `ranks` (long `[n, n_layers]`, `pool_ranks` per layer) of
    cases whose pools have `sizes` candidates (`[n]`): per layer the top-1 accuracy (share of
    rank 0) and the mean reciprocal rank (mean of 1 / (rank + 1)), their best layers, and
    chance: a uniformly random ranking's top-1 (mean of 1 / P) and MRR (mean of H_P / P, H_P
    the P-th harmonic number)."""
    if not len(ranks):
        return {"n": 0}
    top1 = (ranks == 0).double().mean(0).tolist()
    mrr = (1.0 / (ranks + 1).double()).mean(0).tolist()
    sizes = sizes.double()
    harmonic = torch.tensor([sum(1.0 / k for k in range(1, int(p) + 1)) for p in sizes.tolist()])
    return {
        "top1_per_layer": top1,
        "mrr_per_layer": mrr,
        "best_top1": max(top1),
        "best_top1_layer": top1.index(max(top1)),
        "best_mrr": max(mrr),
        "chance_top1": float((1.0 / sizes).mean()),
        "chance_mrr": float((harmonic / sizes).mean()),
        "n": len(ranks),
    }


def _pool_block(
    lm: LoadedModel,
    states: torch.Tensor,
    cases: Sequence[tuple[int, str, int]],
    pools: dict[str, ValuePool],
) -> tuple[dict, torch.Tensor]:
    """`pool_scores` of `cases` (row of `states`, attribute, target token), with the top-1
    accuracy per layer of each attribute; and the cases' ranks `[n, n_layers]`."""
    if not cases:
        return {"n": 0}, torch.zeros(0, states.shape[1], dtype=torch.long)
    rows = torch.tensor([row for row, _, _ in cases])
    attrs = [attribute for _, attribute, _ in cases]
    targets = torch.tensor([target for _, _, target in cases])
    width = max(len(pools[a].tokens) for a in attrs)
    candidates = torch.full((len(cases), width), -1, dtype=torch.long)
    for k, attribute in enumerate(attrs):
        candidates[k, : len(pools[attribute].tokens)] = pools[attribute].tokens
    ranks = torch.stack(
        [
            pool_ranks(lens_logits(lm, states[:, layer])[rows], candidates, targets)
            for layer in range(states.shape[1])
        ],
        dim=1,
    )
    sizes = (candidates >= 0).sum(1)
    block = pool_scores(ranks, sizes)
    block["top1_per_layer_by_attribute"] = {
        a: (ranks[torch.tensor([x == a for x in attrs])] == 0).double().mean(0).tolist()
        for a in dict.fromkeys(attrs)
    }
    return block, ranks


def _lens_split(
    subject: Subject,
    lm: LoadedModel,
    applied,
    items: Sequence[QAItem],
    pools: dict[str, ValuePool],
    split: str,
) -> tuple[dict, list[dict]]:
    """The logit lens of `lm` on one split's `items` (`logit_lens`): its numbers and a record
    per question read at the fact's position."""
    cfg, bench = subject.config, subject.bench
    prefixes = [fact_prefix(i.answer, i.value)[0] for i in items]
    with applied():
        read = position_states(
            lm,
            bench,
            items,
            prefixes=prefixes,
            batch_size=cfg.batch_size,
            progress=cfg.progress,
            desc=f"logit lens: {split}",
        )
    rows, states = read["fact"]
    cases = []
    for row, k in enumerate(rows.tolist()):
        item, pool = items[k], pools.get(items[k].attribute)
        fact = fact_prefix(item.answer, item.value)[1]
        prompt = build_prompt(lm, item.question, item.has_image)
        target = fact_token(lm, prompt, prefixes[k], fact)
        if pool is not None and target is not None and target in pool.tokens:
            cases.append((row, item.attribute, target))
    blocks: dict[str, dict] = {}
    blocks["fact"], fact_ranks = _pool_block(lm, states, cases, pools)
    out: dict = {
        "n": len(cases),
        "left_out_no_pool_token": len(items) - len(cases),
        "found_share": None,
        "top_k_share_per_layer": [],
        "median_rank_per_layer": [],
    }
    records: list[dict] = []
    if cases:
        picked = states[[row for row, _, _ in cases]]
        ranks = lens_ranks(lm, picked, [target for _, _, target in cases])
        found = (ranks < cfg.lens_top_k).any(dim=1)
        out["found_share"] = float(found.double().mean())
        out["top_k_share_per_layer"] = (ranks < cfg.lens_top_k).double().mean(0).tolist()
        out["median_rank_per_layer"] = ranks.double().median(0).values.tolist()
        for (row, _, _), whole, pooled in zip(
            cases, ranks.tolist(), fact_ranks.tolist(), strict=True
        ):
            item = items[int(rows[row])]
            records.append(
                {
                    "attack": "logit_lens",
                    "split": split,
                    "person_id": item.person_id,
                    "question": item.question,
                    "prefix": prefixes[int(rows[row])],
                    "value": item.value,
                    "ranks": whole,
                    "pool_ranks": pooled,
                }
            )
    for where in ENTITY_POSITIONS:
        rows, states = read[where]
        cases = []
        for row, k in enumerate(rows.tolist()):
            facts = bench.people[items[k].person_id].facts
            for attribute, pool in pools.items():
                target = pool.token(facts.get(attribute))
                if target is not None:
                    cases.append((row, attribute, target))
        blocks[where], _ = _pool_block(lm, states, cases, pools)
    out["pool"] = blocks
    return out, records


def logit_lens(
    subject: Subject, reference: LoadedModel | None, oracle: LoadedModel | None
) -> tuple[dict, list[dict]]:
    """The logit lens ranked within the attribute's value pool: per layer, the residual state
    through the final norm and the LM head, the logits of the pool's candidates alone
    (`ValuePool`: each value's first token; `pools` says how many values and candidates each
    attribute has), and the rank of the person's value among them. Per split (forget, test;
    `readout_items`: image questions and questions by name about a fact) and position,
    `pool[where]` (`pool_scores`: top-1 accuracy and mean reciprocal rank per layer, their
    best, chance beside them):

    - "fact": where the fact is about to be said, after the reference answer's words before
      it, teacher-forced ("Alma Aldous was born in"); the question's own fact. Questions whose
      fact's token is no candidate of its pool (the tokenizer merges it with the prefix, or
      the answer starts with it) are left out (`left_out_no_pool_token`);
    - the entity positions, with no name prefix (`ENTITY_POSITIONS`: the mean of the image's
      tokens, the last token of the name in a question by name, the prompt's last token):
      every fact of the person, each among its own pool.

    The whole-vocabulary lens at the fact's position stays beside it (`found_share`: the
    share whose fact's first token is in the top `lens_top_k` at some layer, per layer in
    `top_k_share_per_layer`; saturated: it cannot tell the vanilla model from most unlearned
    ones). `reference` and `oracle` hold the same numbers for the model before unlearning
    (the ceiling) and the retrain oracle (the floor), on the same questions.

    Measured on the embedded model (max_items 64, seed 0; 3.3 s on one thread with the
    reference and the oracle, forward passes of 128 questions per model). At the fact's
    position, forget split: the vanilla model's top-1 is 0.72-1.00 over the layers (MRR
    0.83-1.00), the oracle's 0.00-0.03 (MRR 0.11-0.14), chance 0.035 (MRR 0.14); the test
    split alike (0.64-1.00 vs 0.03-0.08). At the entity positions both sit near chance: the
    vanilla model's best top-1 is 0.05 (image), 0.08 (name), 0.14 (last prompt token, at the
    last layer), the oracle's at most 0.06: the tiny model keeps no fact where it holds the
    person, it looks the fact up where it says it."""
    cfg = subject.config
    pools = value_pools(subject.lm, subject.bench)
    if not pools:
        return {"skipped": "no fact attribute has a pool of two or more candidate tokens"}, []
    items = {
        split: readout_items(subject.bench, split, cfg.max_items, cfg.seed, list(pools))
        for split in ATTACKED_SPLITS
    }
    out: dict = {"top_k": cfg.lens_top_k, "pools": {a: p.info() for a, p in pools.items()}}
    records: list[dict] = []
    models = {"audited": (subject.lm, subject.applied)}
    for name, model in (("reference", reference), ("oracle", oracle)):
        if model is not None:
            models[name] = (model, nullcontext)
    for name, (model, applied) in models.items():
        for split, questions in items.items():
            if not questions:
                continue
            block, mine = _lens_split(subject, model, applied, questions, pools, split)
            if name == "audited":
                out[split] = block
                records += mine
            else:
                out.setdefault(name, {})[split] = block
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
