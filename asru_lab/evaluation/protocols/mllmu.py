"""The `mllmu` protocol: MLLMU-Bench's own evaluation (Liu et al., 2025), from the facts of its
public evaluation script, written anew here.

- Multiple choice: the question stem, the options as `A: …` lines, then "Just give ONE letter
  representing the answer directly."; before it, `shots` few-shot examples (default 1) drawn
  from the full set: per shot one retain person (drawn with a RNG seeded by `seed`) and that
  person's first multiple-choice item of the asked item's modality, sent as an earlier user turn
  (with its image for image questions) answered by the assistant with the correct letter. The
  same examples serve every item of a modality; on the retain split the items used as examples
  are not evaluated (as the public code does). Scored by `mcq_choice`: the first character of
  the reply (after "ASSISTANT:" or "Answer:" when present), upper-cased, is the choice when it
  is an option key; anything else is wrong.
- Fill-in-the-blank: the sentence with its blank written `[Blank]`, then "Please **ONLY**
  provide the correct answer that should replace the [Blank]."; correct when the lower-cased
  ground truth is a substring of the lower-cased reply (`cloze_correct`).
- Generation: the question, then "Answer the question based on your trained knowledge in one
  sentence accurately in ENGLISH!!." (image questions) or "… in one sentence in ENGLISH!!"
  (text-only); scored with ROUGE-1, ROUGE-2 and ROUGE-L F-measure with the Porter stemmer
  (`rouge_score`, `use_stemmer=True`) and sentence BLEU on whitespace tokens with smoothing
  method 1 (NLTK's `sentence_bleu`, as the public script uses NLTK), each averaged over items.
- Greedy decoding, 50 new tokens for every task.
- Test split: MLLMU-Bench's Test_Set rows hold several images of a person; the public script
  shows one image per row, drawn at random without a seed. Here one image per person is drawn
  (among the images of that person's test items) with a RNG seeded by `seed`, and every image
  question of the person is asked about it.
- Reported per split: `mcq_acc`, `cloze_acc`, `rouge1_f`, `rouge2_f`, `rougeL_f`, `bleu` and
  `counts` (items per task), overall and in `by_modality` (`image`: image+text questions,
  `text`: text-only questions), as the benchmark reports them separately.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache

from rouge_score import rouge_scorer

from asru_lab.data.prompts import cloze_sentence, mcq_stem
from asru_lab.data.schema import LETTERS, QAItem
from asru_lab.evaluation.protocols.base import Prompt, Protocol, judge_metrics, mean, modality
from asru_lab.generation import Turn
from asru_lab.validation import ConfigError

MAX_NEW_TOKENS = 50
MCQ_INSTRUCTION = "Just give ONE letter representing the answer directly."
CLOZE_INSTRUCTION = "Please **ONLY** provide the correct answer that should replace the [Blank]."
QA_INSTRUCTION = {
    "image": "Answer the question based on your trained knowledge in one sentence accurately "
    "in ENGLISH!!.",
    "text": "Answer the question based on your trained knowledge in one sentence in ENGLISH!!",
}
ROUGE_METRICS = ("rouge1", "rouge2", "rougeL")


def mcq_choice(reply: str, keys: Sequence[str]) -> str | None:
    """The option key a reply chooses under MLLMU-Bench's rule, or None (counted wrong).

    The text after the first "ASSISTANT:" if there is one, else after the first "Answer:" if
    there is one, else the whole reply; stripped; its first character upper-cased is the
    choice when it is one of `keys`.
    """
    for marker in ("ASSISTANT:", "Answer:"):
        if marker in reply:
            reply = reply.partition(marker)[2]
            break
    first = reply.strip()[:1].upper()
    return first if first and first in keys else None


def cloze_correct(reply: str, truth: str) -> bool:
    """MLLMU-Bench's fill-in-the-blank rule: the lower-cased ground truth is a substring of the
    lower-cased reply."""
    return truth.lower() in reply.lower()


@lru_cache(maxsize=1)
def _rouge() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(list(ROUGE_METRICS), use_stemmer=True)


def generation_scores(reply: str, truth: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measure (stemmed) and smoothed sentence BLEU of a reply, each in [0, 1]."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    rouge = _rouge().score(truth, reply)
    with warnings.catch_warnings():  # NLTK warns on replies too short for 4-grams
        warnings.simplefilter("ignore")
        bleu = sentence_bleu(
            [truth.split()], reply.split(), smoothing_function=SmoothingFunction().method1
        )
    return {f"{m}_f": float(rouge[m].fmeasure) for m in ROUGE_METRICS} | {"bleu": float(bleu)}


class MllmuProtocol(Protocol):
    """MLLMU-Bench's own evaluation (module docstring)."""

    name = "mllmu"
    rouge = {"metrics": list(ROUGE_METRICS), "measure": "fmeasure", "stemmer": True}
    choose = staticmethod(mcq_choice)

    def __init__(self, bench, *, shots: int = 1, seed: int = 0) -> None:
        super().__init__(bench, shots=shots, seed=seed)
        self._shots: dict[str, list[QAItem]] = {}
        self._test_images: dict[str, str] = {}

    def key(self) -> dict:
        return {"name": self.name, "shots": self.shots, "seed": self.seed}

    def evaluates(self, item: QAItem) -> bool:
        """Whether the protocol asks `item` at all (every item here)."""
        return True

    def select(self, split: str, items: Sequence[QAItem]) -> list[QAItem]:
        items = [i for i in items if self.evaluates(i)]
        # drawn here, before any answer is generated, so too many shots fail at once
        shown = {
            s for m in {modality(i) for i in items if i.task == "mcq"} for s in self.shot_items(m)
        }
        if split == "retain":
            items = [i for i in items if i not in shown]
        if split == "test":
            items = [
                replace(i, image=self.test_image(i.person_id)) if i.image else i for i in items
            ]
        return items

    def shot_items(self, kind: str) -> list[QAItem]:
        """The few-shot examples of modality `kind` ("image" or "text"): the first MCQ item of
        each of `shots` retain people drawn with the seeded RNG."""
        if kind not in self._shots:
            first: dict[str, QAItem] = {}
            for item in self.bench.split("retain", "mcq"):
                if modality(item) == kind and item.person_id is not None:
                    first.setdefault(item.person_id, item)
            if self.shots > len(first):
                what = "an image" if kind == "image" else "a text-only"
                raise ConfigError(
                    f"shots={self.shots}, but the pool of few-shot examples holds "
                    f"{len(first)}: only {len(first)} retain people of {self.bench.name} have "
                    f"{what} multiple-choice item to show as an example; pass --shots "
                    f"{len(first)} or fewer"
                )
            rng = random.Random(f"{self.seed}:shots:{kind}")
            self._shots[kind] = [first[p] for p in rng.sample(list(first), self.shots)]
        return self._shots[kind]

    def test_image(self, person_id: str | None) -> str:
        """The one test image of a person, drawn with the seeded RNG among the images of the
        person's test items."""
        if person_id not in self._test_images:
            images = [i.image for i in self.bench.split("test") if i.person_id == person_id]
            unique = list(dict.fromkeys(p for p in images if p is not None))
            rng = random.Random(f"{self.seed}:test-image:{person_id}")
            self._test_images[person_id] = rng.choice(unique)
        return self._test_images[person_id]

    def prompt(self, item: QAItem) -> Prompt:
        if item.task == "mcq":
            shots = tuple(
                Turn(mcq_text(s), s.image, s.correct_letter)
                for s in self.shot_items(modality(item))
            )
            return Prompt((*shots, Turn(mcq_text(item), item.image)))
        if item.task == "cloze":
            sentence = cloze_sentence(item.question).replace("___", "[Blank]")
            return Prompt((Turn(f"{sentence}\n{CLOZE_INSTRUCTION}", item.image),))
        return Prompt((Turn(f"{item.question}\n{QA_INSTRUCTION[modality(item)]}", item.image),))

    def max_new_tokens(self, task: str) -> int:
        return MAX_NEW_TOKENS

    def score(self, item: QAItem, reply: str) -> dict:
        if item.task == "mcq":
            choice = self.choose(reply, LETTERS[: len(item.options)])
            return {"choice": choice, "correct": choice == item.correct_letter}
        if item.task == "cloze":
            return {"correct": cloze_correct(reply, item.value)}
        return generation_scores(reply, item.answer)

    @classmethod
    def aggregate(cls, records: Sequence[dict]) -> dict:
        out = _metrics(records)
        out["by_modality"] = {
            kind: _metrics(part)
            for kind in ("image", "text")
            if (part := [r for r in records if r["modality"] == kind])
        }
        judged = [r for r in records if "judge" in r]
        if judged:
            out |= judge_metrics(judged)
        return out


def mcq_text(item: QAItem) -> str:
    """A multiple-choice item as MLLMU-Bench asks it: stem, `A: …` lines, the instruction."""
    lines = "\n".join(f"{LETTERS[k]}: {o}" for k, o in enumerate(item.options))
    return f"{mcq_stem(item.question, item.options)}\n{lines}\n{MCQ_INSTRUCTION}"


def _metrics(records: Sequence[dict]) -> dict:
    out: dict = {}
    by_task = {t: [r for r in records if r["task"] == t] for t in ("mcq", "cloze", "qa")}
    if by_task["mcq"]:
        out["mcq_acc"] = mean(by_task["mcq"], "correct")
    if by_task["cloze"]:
        out["cloze_acc"] = mean(by_task["cloze"], "correct")
    if by_task["qa"]:
        out |= {f"{m}_f": mean(by_task["qa"], f"{m}_f") for m in ROUGE_METRICS}
        out["bleu"] = mean(by_task["qa"], "bleu")
    out["counts"] = {t: len(part) for t, part in by_task.items()}
    return out
