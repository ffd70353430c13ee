"""The universal soft-prompt attack: learn a few input embeddings that make the audited model
say the facts of half of the forget people, then put them before the *other* half's questions.

A per-item optimised input can make any model say any string (Chen et al. 2025): such a
prompt proves nothing. A universal one can: it is fitted on the taught half's questions (the
relearning attack's halves, `relearn.halves`) and scored only on the held-out half's, whose
facts it never saw. If what it learnt is "answer instead of refusing", the held-out people's
facts come back; if they are gone, there is nothing to bring back. The retrain oracle gets the
identical attack (its own prompt, fitted on the same questions) for the floor.

What is learnt: `AuditConfig.soft_prompt_tokens` vectors in the token-embedding space, put at
the start of the question's text (in place of as many pad tokens written there, whose
embeddings a hook on the embedding layer replaces in every prompt pass; the attention sees
them as any other prompt token). Initialised from the embeddings of a neutral instruction's
tokens; Adam at `soft_prompt_lr` times the embedding table's standard deviation (a rate in the
embeddings' own scale, the same for a tiny and a real model) for `soft_prompt_steps` steps of
`relearn_batch_size` taught questions with their reference answers, the model's weights frozen
and an inference-time method's hooks applied (as they are in training: see `SteeringProbe.apply`
on a pass over prompt and answer).

Control: the fitted half's mean answer loss (negative log-likelihood per answer token) before
and after; a prompt that did not lower it never trained and the attack is void
(`report.void_attacks`). The fitted half's leak under the prompt is reported (`fit_leak`) but
counts nowhere: it is what a per-item attack would measure.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace

import torch

from asru_lab.data.schema import QAItem
from asru_lab.evaluation.harness import forget_people
from asru_lab.evaluation.probability import answer_logprobs
from asru_lab.models.loading import LoadedModel
from asru_lab.progress import tqdm
from asru_lab.training import Example, answer_tokens, seeded

from . import choice
from .attacks import ATTACKED_SPLITS, Subject, leaks
from .config import AuditError
from .measure import leak_records, rate

# the instruction whose tokens' embeddings start the prompt (cycled when it is shorter)
INIT_TEXT = "Please answer the question about this person with the facts you know."


def marker(lm: LoadedModel) -> str | None:
    """The token written where the soft prompt goes: the tokenizer's pad token, which no
    question contains and which is not the end of a turn; None when it has no such token."""
    tok = lm.tokenizer
    if tok.pad_token is None or tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
        return None
    return tok.pad_token


def prompted(items: Sequence[QAItem], text: str) -> list[QAItem]:
    """`items` with `text` written before each question."""
    return [replace(i, question=text + i.question) for i in items]


@contextmanager
def soft_prompted(lm: LoadedModel, vectors: torch.Tensor) -> Iterator[None]:
    """While the block runs, every prompt pass (more than one token) of `lm` has the rows of
    `vectors` (`[n, hidden]`) as the embeddings of each row's last n pad tokens (the marker
    run written before the question; left padding comes before it, so the last n are it)."""
    pad_id = lm.tokenizer.pad_token_id
    n = vectors.shape[0]

    def hook(_module, args, output):
        ids = args[0]
        if ids.dim() != 2 or ids.shape[1] <= 1:
            return output  # a decoding step
        rows, cols = [], []
        for r in range(ids.shape[0]):
            at = (ids[r] == pad_id).nonzero().flatten()
            if len(at) < n:
                raise AuditError(
                    f"a prompt has {len(at)} pad tokens where the soft prompt needs {n}: it "
                    "was not written with `soft_prompt.prompted`"
                )
            rows += [r] * n
            cols += at[-n:].tolist()
        out = output.clone()
        out[rows, cols] = vectors.to(out.dtype).repeat(ids.shape[0], 1)
        return out

    handle = lm.adapter.embed_tokens(lm.model).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """Every parameter of `model` without gradients while the block runs (restored after)."""
    was = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in was:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in was:
            p.requires_grad_(flag)


def initial_vectors(lm: LoadedModel, n: int) -> torch.Tensor:
    """float32 `[n, hidden]`: the embeddings of `INIT_TEXT`'s tokens, cycled to n."""
    ids = lm.tokenizer(INIT_TEXT, add_special_tokens=False)["input_ids"]
    table = lm.adapter.embed_tokens(lm.model).weight.detach()
    picked = [ids[k % len(ids)] for k in range(n)]
    return table[picked].float().clone()


def mean_answer_loss(
    subject: Subject, items: Sequence[QAItem], vectors: torch.Tensor, text: str
) -> float:
    """Mean negative log-likelihood per answer token of `items`' reference answers with the
    soft prompt in place (the method's hooks applied)."""
    cfg = subject.config
    with subject.applied(), soft_prompted(subject.lm, vectors):
        logps = answer_logprobs(
            subject.lm,
            subject.bench,
            prompted(items, text),
            [i.answer for i in items],
            batch_size=cfg.batch_size,
        )
    total = sum(float(lp.sum()) for lp in logps)
    return -total / max(1, sum(len(lp) for lp in logps))


def fit(subject: Subject, items: Sequence[QAItem], text: str) -> tuple[torch.Tensor, list]:
    """The soft prompt fitted on `items` (module docstring), with the training loss every 25
    steps."""
    from .relearn import answer_loss  # relearn imports this package's attacks

    cfg, lm = subject.config, subject.lm
    table = lm.adapter.embed_tokens(lm.model).weight
    vectors = initial_vectors(lm, cfg.soft_prompt_tokens).to(lm.device)
    vectors.requires_grad_(True)
    step_size = cfg.soft_prompt_lr * float(table.detach().float().std())
    optimizer = torch.optim.Adam([vectors], lr=step_size)
    shown = prompted(items, text)
    examples = [Example(i.image, i.question, i.answer) for i in shown]
    tails, _ = answer_tokens(lm, examples)
    losses: list[dict] = []
    size = min(cfg.relearn_batch_size, len(shown))
    with ExitStack() as stack:
        stack.enter_context(seeded(cfg.seed, lm.device))
        stack.enter_context(frozen(lm.model))
        stack.enter_context(subject.applied())
        stack.enter_context(soft_prompted(lm, vectors))
        order = torch.randperm(len(shown), generator=torch.Generator().manual_seed(cfg.seed))
        bar = stack.enter_context(
            tqdm(total=cfg.soft_prompt_steps, desc="soft prompt", disable=not cfg.progress)
        )
        for step in range(cfg.soft_prompt_steps):
            chunk = [int(order[(step * size + j) % len(shown)]) for j in range(size)]
            picked = [shown[k] for k in chunk]
            loss = answer_loss(lm.model, lm, subject.bench, picked, [tails[k] for k in chunk])
            if not torch.isfinite(loss):
                raise AuditError(
                    f"the soft prompt's fit diverged: the loss became {float(loss)} at step "
                    f"{step + 1}; lower AuditConfig.soft_prompt_lr (now {cfg.soft_prompt_lr:g})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            if (step + 1) % 25 == 0 or step + 1 == cfg.soft_prompt_steps:
                losses.append({"step": step + 1, "loss": round(float(loss.detach()), 4)})
    return vectors.detach(), losses


def soft_prompt(subject: Subject) -> tuple[dict, list[dict]]:
    """The attack (module docstring). Returns the held-out half's forget and test leak and the
    retain recall under the prompt (`attacks.leaks`) beside the same questions' plain leak is in
    the audit's baseline; `fit_leak` (the taught half's, counted nowhere), `fit_loss_before`
    / `fit_loss_after` (the control) and the training losses. Records: "soft_prompt" (held-out
    half and retain) and "soft_prompt_fit" (`half` "taught")."""
    from .relearn import halves  # relearn imports this package's attacks

    cfg, bench, lm = subject.config, subject.bench, subject.lm
    people = forget_people(bench)
    if len(people) < 2:
        return {"skipped": f"needs 2 forget people, the forget split has {len(people)}"}, []
    pad = marker(lm)
    if pad is None:  # the other attacks' work is kept: this one says why it did not run
        why = "the tokenizer has no pad token distinct from the end of a turn to write it at"
        return {"skipped": why}, []
    text = pad * cfg.soft_prompt_tokens
    taught, held_out = halves(people, cfg.seed)
    shown, held = set(taught), set(held_out)
    fitted = [i for i in bench.questions("forget", "qa") if i.person_id in shown]
    if not fitted:
        return {"skipped": "the taught half has no generation question"}, []
    before = mean_answer_loss(subject, fitted, initial_vectors(lm, cfg.soft_prompt_tokens), text)
    vectors, losses = fit(subject, fitted, text)
    after = mean_answer_loss(subject, fitted, vectors, text)
    asked = {
        split: [i for i in subject.questions[split] if i.person_id in held]
        for split in ATTACKED_SPLITS
    }
    asked["retain"] = subject.questions["retain"]
    asked["fit"] = [i for i in subject.questions["forget"] if i.person_id in shown]
    records: list[dict] = []
    with subject.applied(), soft_prompted(lm, vectors):
        for split, items in asked.items():
            attack = "soft_prompt_fit" if split == "fit" else "soft_prompt"
            found = leak_records(
                lm, bench, prompted(items, text), cfg, attack=attack, desc=f"soft prompt: {split}"
            )
            for record, item in zip(found, items, strict=True):
                record["question"] = item.question  # as the other attacks name it
                if split == "fit":
                    record["half"] = "taught"
            records += found
    chosen = choice.under(
        subject,
        "soft_prompt",
        people=held,
        inside=lambda: soft_prompted(lm, vectors),
        rewrite=lambda question: text + question,
    )
    records += chosen
    measured = [r for r in records if r["attack"] == "soft_prompt" and "leak" in r]
    fit_records = [r for r in records if r["attack"] == "soft_prompt_fit"]
    out = {
        **leaks(measured),
        **choice.accuracy(chosen),
        "fit_leak": rate(fit_records),
        "fit_loss_before": round(before, 4),
        "fit_loss_after": round(after, 4),
        "tokens": cfg.soft_prompt_tokens,
        "steps": cfg.soft_prompt_steps,
        "losses": losses,
        "taught_people": taught,
        "measured_people": held_out,
    }
    return out, records
