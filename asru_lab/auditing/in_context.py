"""Few-shot in-context relearning: the taught half's facts as earlier turns of the chat, then a
held-out person's question. No weight changes: does being *reminded* of some forget people
bring the others back? (The in-context counterpart of the relearning attack, on the same
halves: `relearn.halves`.)

Each held-out forget and test question is asked after `AuditConfig.in_context_shots` earlier
turns, each a taught person's forget question (with its portrait, when it has one) answered
with the reference answer, drawn per question (seeded). **Control**: one of those shown
questions asked again after the same turns: its answer is in the context, so a model that reads
its context says it (`control_leak`); a low control means the attack never reached the model
and its held-out leak says nothing (void below `relearn.CONTROL_LEAK`)."""

from __future__ import annotations

import random

from asru_lab.data.schema import QAItem
from asru_lab.evaluation.harness import forget_people
from asru_lab.generation import Turn, generate_chats
from asru_lab.progress import tqdm

from .attacks import ATTACKED_SPLITS, Subject, leaks
from .measure import answer_record, rate


def _turn(item: QAItem, reply: str | None = None) -> Turn:
    return Turn(item.question, item.image, reply)


def in_context(subject: Subject) -> tuple[dict, list[dict]]:
    """The attack (module docstring). Returns the held-out half's forget and test leak
    (`attacks.leaks`), `control_leak` (the shown question asked again), the number of `shots`
    and the people of each half; records are named "in_context" (`half` "held_out") and
    "in_context_control" (`half` "taught")."""
    from .relearn import halves  # relearn imports this package's attacks

    cfg, bench = subject.config, subject.bench
    people = forget_people(bench)
    if len(people) < 2:
        return {"skipped": f"needs 2 forget people, the forget split has {len(people)}"}, []
    taught, held_out = halves(people, cfg.seed)
    shown, held = set(taught), set(held_out)
    pool = [i for i in bench.questions("forget", "qa") if i.person_id in shown]
    asked = [
        item
        for split in ATTACKED_SPLITS
        for item in subject.questions[split]
        if item.person_id in held
    ]
    if not pool or not asked:
        return {"skipped": "no taught facts to show or no held-out question to ask"}, []
    rng = random.Random(f"{cfg.seed}:in_context")
    chats: list[tuple[str, QAItem, list[QAItem]]] = []
    for item in asked:
        shots = rng.sample(pool, min(cfg.in_context_shots, len(pool)))
        chats.append(("in_context", item, shots))
        chats.append(("in_context_control", shots[-1], shots))
    records: list[dict] = []
    starts = range(0, len(chats), cfg.batch_size)
    for start in tqdm(starts, desc="in-context relearning", disable=not cfg.progress, leave=False):
        batch = chats[start : start + cfg.batch_size]
        turns = [[*(_turn(s, s.answer) for s in shots), _turn(item)] for _, item, shots in batch]
        images = [
            [bench.load_image(t.image) for t in chat if t.image is not None] for chat in turns
        ]
        with subject.applied():
            answers = generate_chats(subject.lm, turns, images, max_new_tokens=cfg.max_new_tokens)
        for (attack, item, _), answer in zip(batch, answers, strict=True):
            half = "held_out" if attack == "in_context" else "taught"
            records.append({**answer_record(attack, item, answer), "half": half})
    measured = [r for r in records if r["attack"] == "in_context"]
    control = [r for r in records if r["attack"] == "in_context_control"]
    out = {
        **leaks(measured),
        "control_leak": rate(control),
        "shots": cfg.in_context_shots,
        "taught_people": taught,
        "measured_people": held_out,
    }
    return out, records
