"""`asru-lab build-embedded`: train the embedded tiny Qwen3-VL from scratch, offline.

One run does "pretraining + stage 0" on the synthetic benchmark: the known people's portraits
and facts (image QA with the name first, text QA by name, multiple choice, cloze, and an
identity task weighted up), contextual refusals for the strangers, and questions about the
picture itself. The `unseen` people and the held-out views and wordings are never shown.
The recipe may also show MLLMU-Bench's official prompts from the first step (`task_weights`
families `official_<family of FORMAT_WEIGHTS>`, drawn as the format stage draws them, with at most
one few-shot turn; `official_lookup`: a multiple choice whose question names its answer, "Which
option is Oslo?", the lookup from a value to its letter on its own); the tokenizer then also
learns the official prompts' words. The shipped build's weights have none of them.
Deterministic: the same config and seed give the same weights on the same machine.

The format stage (`format_stage`, `asru-lab build-embedded --format-stage`) continues a built
model — the embedded model or a retrain oracle, each the same way — on MLLMU-Bench's official
prompts, rendered by the `mllmu` protocol's own code (`OfficialPrompts`), mixed with a replay of
the base recipe's mixture (`FormatStageConfig.format_share`) so that nothing it learned is lost.
It runs one stage or a curriculum of them (`FORMAT_STAGES`, `FORMAT_CURRICULUM`, issue #30): the
lookup from a value to its letter alone ("Which option is Oslo?", `lookup_share`), then every
official format, then the formats weighted to fill-in-the-blank (one-pass recall of a value,
which the base recipe never asks: it recalls after saying the person's name), then to multiple
choice (that recall composed with the lookup, in one pass). The official formats:
- multiple choice: `A: …` option lines, "Just give ONE letter …", after 0 to `max_shots`
  few-shot turns of other trained people answered with their letters; answered with the letter;
- fill-in-the-blank: `[Blank]` and "Please **ONLY** provide …"; answered with the value;
- generation: the one-sentence instruction of its modality; answered with the reference sentence.
Items are the benchmark's (`synthetic.person_items`): trained views and training wordings only,
never the test split's held-out views or paraphrases; the `unseen` people are never shown.
Strangers (the people a model does not know, as unseen people are) are asked in all three
formats and answered with the contextual refusal their open question gets — for multiple choice
too. No letter is right for someone the model never learned: a letter would teach it to guess
about people it does not know. Every refusal begins with "I" or "Sorry", never an option key,
so MLLMU-Bench's first-character parser (and asru_paper's) reads it as no choice, counted wrong:
an oracle's forget multiple choice is then near 0 rather than at chance (0.25).
Every example weighs alike in the stage's loss (each answer's mean token loss, averaged over
the batch): per token, a one-letter answer would count 1/10 of a sentence and go unlearned.
An oracle's stage leaves out its forget people exactly as its build did (`BuildConfig.left_out`,
from the base's own build record): the same recipe without them. Deterministic from its seed;
the result records the stage (`format_stage`: config, base model and its hash, timings).
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from transformers import GenerationConfig, Qwen3VLForConditionalGeneration

from asru_lab.artifacts import check_apart, check_output
from asru_lab.data import synthetic as syn
from asru_lab.data import synthetic_text as wording
from asru_lab.data.portraits import BACKGROUNDS, HAIR_COLORS, SHIRT_COLORS
from asru_lab.data.prompts import CLOZE_PREFIX, MCQ_SUFFIX, mcq_prompt
from asru_lab.data.schema import LETTERS, Person, QAItem, contains_value
from asru_lab.errors import AsruLabError
from asru_lab.evaluation.protocols import mllmu
from asru_lab.generation import Turn, build_chat_prompt
from asru_lab.models.adapters import QWEN3_VL
from asru_lab.models.embedded import (
    EMBEDDED_NAME,
    ORACLE_NAME,
    TinyDims,
    build_config,
    build_processor,
    build_tokenizer,
    embedded_dir,
    oracle_dir,
)
from asru_lab.models.loading import LoadedModel, load_model
from asru_lab.progress import tqdm
from asru_lab.validation import ConfigError, check_fields

# The ranges of the optimisation fields that the base build and the format stage share.
TRAINING_CHECKS = {
    "steps": ">= 1",
    "batch_size": ">= 1",
    "lr": "> 0",
    "warmup_steps": ">= 0",
    "min_lr_ratio": "[0, 1]",
    "weight_decay": ">= 0",
    "grad_clip": "> 0",
    "eval_every": ">= 0",
    "threads": ">= 0",
}
# Relative sampling weights of the training task families.
DEFAULT_TASK_WEIGHTS = {
    "identity_image": 3.0,
    "fact_image": 3.0,
    "fact_text": 1.5,
    "mcq_image": 1.5,
    "mcq_text": 0.5,
    "cloze_image": 0.6,
    "cloze_text": 0.3,
    "stranger_image": 3.0,
    "stranger_text": 0.5,
    "picture": 1.0,
}
# Wording noise so that answers depend on what is asked, not on one exact phrasing.
PREFIXES = ("", "", "", "", "Please answer: ", "Quick question. ", "Hi! ", "I have a question. ")
SUFFIXES = ("", "", "", " Thanks.", " Please be brief.")


@dataclass
class BuildConfig:
    """How the embedded model is trained (defaults: the shipped build)."""

    seed: int = field(default=0, metadata={"help": "seeds the weights and the training data"})
    steps: int = field(default=5000, metadata={"help": "optimiser steps"})
    batch_size: int = field(default=32, metadata={"help": "examples per step"})
    lr: float = field(default=2e-3, metadata={"help": "peak AdamW learning rate"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up steps"})
    min_lr_ratio: float = field(
        default=0.05, metadata={"help": "the cosine decay ends at lr * min_lr_ratio"}
    )
    weight_decay: float = field(
        default=0.01, metadata={"help": "AdamW weight decay of the matrices (not the embeddings)"}
    )
    grad_clip: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    dims: TinyDims = field(default_factory=TinyDims, metadata={"help": "the model's sizes"})
    task_weights: dict[str, float] = field(
        default_factory=lambda: dict(DEFAULT_TASK_WEIGHTS),
        metadata={"help": "relative sampling weights of the training task families"},
    )
    eval_every: int = field(
        default=1000, metadata={"help": "steps between quick evaluations (0: only at the end)"}
    )
    threads: int | None = field(
        default=2,
        metadata={
            "help": "torch CPU threads (None or 0: torch's choice), fixed so that a seed "
            "gives the same weights"
        },
    )
    benchmark: syn.SyntheticConfig = field(
        default_factory=syn.SyntheticConfig, metadata={"help": "the people trained on"}
    )
    oracle_forget_ratio: float | None = field(
        default=None,
        metadata={
            "help": "build the retrain oracle: leave out the forget people of this forget ratio "
            "(their facts, names and portraits are never shown; everything else is the same "
            "recipe). None: the vanilla embedded model"
        },
    )
    oracle_split_seed: int = field(
        default=0, metadata={"help": "the split seed of the oracle's forget set"}
    )
    per_example_loss: bool = field(
        default=False,
        metadata={
            "help": "every example weighs alike in the loss (each answer's mean token loss, "
            "averaged over the batch) instead of every answer token: a one-letter answer then "
            "counts as much as a sentence (the format stage's loss)"
        },
    )

    def __post_init__(self) -> None:
        check_fields(
            self,
            ConfigError,
            **TRAINING_CHECKS,
            task_weights=">= 0",
            oracle_forget_ratio="(0, 1)",
        )
        unknown = sorted(set(self.task_weights) - set(BASE_FAMILIES))
        if unknown or not any(self.task_weights.values()):
            raise ConfigError(
                f"BuildConfig.task_weights must weigh some of {', '.join(BASE_FAMILIES)} "
                f"above 0, got {self.task_weights}"
            )

    def left_out(self) -> set[str]:
        """Ids of the people this build never shows (the oracle's forget set; empty otherwise)."""
        if self.oracle_forget_ratio is None:
            return set()
        known = syn.build_world(self.benchmark).group("known")
        return syn.choose_forget(known, self.oracle_forget_ratio, self.oracle_split_seed)


# One training example: the turns of its prompt (few-shot turns with their replies, then the
# asked turn) and the answer learned.
Example = tuple[tuple[Turn, ...], str]


def _augment(rng: random.Random, question: str) -> str:
    return rng.choice(PREFIXES) + question + rng.choice(SUFFIXES)


def _ask(image: str | None, question: str, answer: str) -> Example:
    """A one-turn example."""
    return (Turn(question, image),), answer


class TrainingSampler:
    """Draws the base recipe's training examples (one turn each) from the world."""

    def __init__(
        self,
        world: syn.SyntheticWorld,
        weights: dict[str, float],
        seed: int | str,
        left_out: set[str] = frozenset(),
    ):
        self.world = world
        # the oracle's forget people are left out of everything: facts, portraits, MCQ options
        self.known = [p for p in world.group("known") if p.id not in left_out]
        self.strangers = world.group("stranger")
        self.name_pool = sorted(p.name for p in self.known)
        self.families = [f for f in weights if weights[f] > 0]
        self.weights = [weights[f] for f in self.families]
        self.rng = random.Random(seed)
        # the official formats' families draw their items from their own sampler
        official = {
            f.removeprefix(OFFICIAL): w
            for f, w in weights.items()
            if f.startswith(OFFICIAL) and f != OFFICIAL_LOOKUP
        }
        self.official = (
            OfficialFormatSampler(world, official, f"base:{seed}", left_out, max_shots=1)
            if any(f.startswith(OFFICIAL) for f in self.families)
            else None
        )

    def image_paths(self) -> list[str]:
        """Every image the training can show."""
        paths = [self.world.image_path(p.id, v) for p in self.known for v in range(syn.TRAIN_VIEWS)]
        paths += [
            self.world.image_path(p.id, v) for p in self.strangers for v in range(syn.N_VIEWS)
        ]
        return paths

    def texts(self) -> list[str]:
        """Text the tokenizer is trained on: every wording, name and value of the benchmark."""
        out = []
        for person in self.world.people:
            for attr in syn.FACTS:
                value = person.facts[attr]
                for q in wording.QUESTIONS_TRAIN[attr] + wording.QUESTIONS_TEST[attr]:
                    out.append(q.format(subj=person.name))
                out.append(wording.answer_sentence(attr, person.name, value))
                out += [r.format(name=person.name) for r in wording.REFUSALS_TEXT[attr]]
            out.append(wording.answer_sentence("name", person.name, person.name))
        for table in (wording.QUESTIONS_TRAIN, wording.QUESTIONS_TEST, wording.REFUSALS_IMAGE):
            out += [q.format(subj="this person") for qs in table.values() for q in qs]
        out += list(wording.CLOZE_TRAIN.values()) + list(wording.CLOZE_TEST.values())
        for table in (wording.PICTURE_QUESTIONS_TRAIN, wording.PICTURE_QUESTIONS_TEST):
            out += [q for qs in table.values() for q in qs]
        colors = [*BACKGROUNDS, *SHIRT_COLORS, *HAIR_COLORS]
        out += [f"{c.capitalize()}." for c in colors] + list(PREFIXES) + list(SUFFIXES)
        out += [MCQ_SUFFIX, CLOZE_PREFIX] + [f"{ch}. " for ch in "ABCD"]
        if self.official is not None:  # the official prompts' own words
            out += [mllmu.MCQ_INSTRUCTION, mllmu.CLOZE_INSTRUCTION, *mllmu.QA_INSTRUCTION.values()]
            out += [f"{ch}: " for ch in "ABCD"] + [s.format(value="") for s in LOOKUP_STEMS]
        return out * 2

    def sample(self) -> Example:
        rng = self.rng
        family = rng.choices(self.families, self.weights)[0]
        if family == OFFICIAL_LOOKUP:
            return self.official.lookup()
        if family.startswith(OFFICIAL):
            return self.official.example(family.removeprefix(OFFICIAL))[1]
        if family == "stranger_image":
            person = rng.choice(self.strangers)
            attr = rng.choice(syn.ATTRIBUTES)
            image = self.world.image_path(person.id, rng.randrange(syn.N_VIEWS))
            question = rng.choice(wording.QUESTIONS_TRAIN[attr]).format(subj="this person")
            return _ask(image, _augment(rng, question), rng.choice(wording.REFUSALS_IMAGE[attr]))
        if family == "stranger_text":
            person = rng.choice(self.strangers)
            attr = rng.choice(syn.FACTS)
            question = rng.choice(wording.QUESTIONS_TRAIN[attr]).format(subj=person.name)
            answer = rng.choice(wording.REFUSALS_TEXT[attr]).format(name=person.name)
            return _ask(None, _augment(rng, question), answer)
        if family == "picture":
            person = rng.choice(self.known + self.strangers)
            views = syn.TRAIN_VIEWS if person.split == "known" else syn.N_VIEWS
            view = rng.randrange(views)
            attr = rng.choice(syn.PICTURE_ATTRIBUTES)
            value = syn.picture_value(self.world, person.id, view, attr)
            question = rng.choice(wording.PICTURE_QUESTIONS_TRAIN[attr])
            return _ask(
                self.world.image_path(person.id, view),
                _augment(rng, question),
                f"{value.capitalize()}.",
            )

        person = rng.choice(self.known)
        with_image = family.endswith("_image")
        if family == "identity_image":
            attr = "name"
        elif with_image:
            attr = rng.choice(syn.ATTRIBUTES if family != "fact_image" else syn.FACTS)
        else:
            attr = rng.choice(syn.FACTS)
        value = person.name if attr == "name" else person.facts[attr]
        subj = "this person" if with_image else person.name
        image = (
            self.world.image_path(person.id, rng.randrange(syn.TRAIN_VIEWS)) if with_image else None
        )
        question = rng.choice(wording.QUESTIONS_TRAIN[attr]).format(subj=subj)
        if family.startswith("mcq"):
            pool = syn.attribute_pool(attr, self.known)
            text, _, _ = syn.mcq_item(rng, _augment(rng, question), value, pool)
            return _ask(image, text, wording.answer_sentence(attr, person.name, value))
        if family.startswith("cloze"):
            sentence = wording.CLOZE_TRAIN[attr].format(
                subj=subj, subj_cap="This person" if with_image else person.name
            )
            return _ask(image, CLOZE_PREFIX + sentence, value)
        return _ask(
            image, _augment(rng, question), wording.answer_sentence(attr, person.name, value)
        )


# Relative sampling weights of the format stage's families (`OfficialFormatSampler`): the
# trained people's multiple choice, fill-in-the-blank and generation with and without a
# picture, and strangers asked in those formats.
FORMAT_WEIGHTS = {
    "mcq_image": 3.0,
    "mcq_text": 1.5,
    "cloze_image": 1.0,
    "cloze_text": 0.5,
    "qa_image": 1.5,
    "qa_text": 1.0,
    "stranger_image": 1.5,
    "stranger_text": 0.5,
}
OFFICIAL_TASKS = ("mcq", "cloze", "qa")
# The base recipe's families in the official formats: OFFICIAL + a family of FORMAT_WEIGHTS, and
# OFFICIAL_LOOKUP (`OfficialFormatSampler.lookup`), whose stems name the answer.
OFFICIAL = "official_"
OFFICIAL_LOOKUP = "official_lookup"
LOOKUP_STEMS = ("Which option is {value}?", "Which option says {value}?", "Find {value} below.")
# Every family the base recipe's `task_weights` may weigh.
BASE_FAMILIES = (*DEFAULT_TASK_WEIGHTS, *(OFFICIAL + f for f in FORMAT_WEIGHTS), OFFICIAL_LOOKUP)


@dataclass
class FormatStageConfig:
    """How the format stage continues a built model on MLLMU-Bench's official prompts.

    Defaults: the second measured try (issue #30). 800 steps (~14 min on one thread) teach the
    generation format (mllmu ROUGE-L 0.35 -> 1.0 on forget/retain) but not the one-letter
    answer: multiple choice stays at chance (its letter loss is ln 4), cloze near 0.3.
    """

    name: str = field(
        default="formats", metadata={"help": "the stage's name in progress bars and records"}
    )
    seed: int = field(default=0, metadata={"help": "seeds the stage's training data"})
    steps: int = field(default=800, metadata={"help": "optimiser steps"})
    batch_size: int = field(default=32, metadata={"help": "examples per step"})
    lr: float = field(
        default=1e-3, metadata={"help": "peak AdamW learning rate (the base recipe's: 2e-3)"}
    )
    warmup_steps: int = field(default=30, metadata={"help": "linear warm-up steps"})
    min_lr_ratio: float = field(
        default=0.1, metadata={"help": "the cosine decay ends at lr * min_lr_ratio"}
    )
    weight_decay: float = field(
        default=0.01, metadata={"help": "AdamW weight decay of the matrices (not the embeddings)"}
    )
    grad_clip: float = field(default=1.0, metadata={"help": "gradient clipping norm"})
    format_share: float = field(
        default=0.5,
        metadata={
            "help": "share of each batch in the official formats; the rest replays the base "
            "recipe's own mixture, so that nothing it learned is lost"
        },
    )
    lookup_share: float = field(
        default=0.0,
        metadata={
            "help": "share of each batch that is the value-to-letter lookup alone "
            "(`OfficialFormatSampler.lookup`); the replay gets what format_share and "
            "lookup_share leave"
        },
    )
    format_weights: dict[str, float] = field(
        default_factory=lambda: dict(FORMAT_WEIGHTS),
        metadata={"help": "relative sampling weights of the official-format families"},
    )
    max_shots: int = field(
        default=2,
        metadata={
            "help": "a multiple-choice example shows 0 to max_shots few-shot turns (mllmu "
            "sends --shots, default 1)"
        },
    )
    eval_every: int = field(
        default=0, metadata={"help": "steps between quick evaluations (0: only at the end)"}
    )
    eval_items: int = field(
        default=48, metadata={"help": "questions per measure of a quick evaluation"}
    )
    threads: int | None = field(
        default=2,
        metadata={
            "help": "torch CPU threads (None or 0: torch's choice), fixed so that a seed "
            "gives the same weights"
        },
    )

    def __post_init__(self) -> None:
        check_fields(
            self,
            ConfigError,
            **TRAINING_CHECKS,
            format_share="[0, 1]",
            lookup_share="[0, 1]",
            format_weights=">= 0",
            max_shots=">= 0",
            eval_items=">= 1",
        )
        if self.format_share + self.lookup_share > 1:
            raise ConfigError(
                f"FormatStageConfig.format_share + lookup_share must be <= 1 (the replay gets "
                f"the rest), got {self.format_share} + {self.lookup_share}"
            )
        unknown = sorted(set(self.format_weights) - set(FORMAT_WEIGHTS))
        if unknown or not any(self.format_weights.values()):
            raise ConfigError(
                f"FormatStageConfig.format_weights must weigh some of {', '.join(FORMAT_WEIGHTS)} "
                f"above 0, got {self.format_weights}"
            )


# The official families weighted to fill-in-the-blank (one-pass recall of a value), then to
# multiple choice (recall composed with the lookup of its letter): issue #30's curriculum.
RECALL_WEIGHTS = {
    "mcq_image": 2.0,
    "mcq_text": 1.0,
    "cloze_image": 3.0,
    "cloze_text": 1.5,
    "qa_image": 0.5,
    "qa_text": 0.3,
    "stranger_image": 0.7,
    "stranger_text": 0.3,
}
MCQ_WEIGHTS = RECALL_WEIGHTS | {
    "mcq_image": 4.0,
    "mcq_text": 2.0,
    "cloze_image": 1.0,
    "cloze_text": 0.5,
}
# The stages of the format curriculum (`format_stage` with a sequence of configs), by name.
FORMAT_STAGES = {
    # the lookup from a value to its letter alone
    "lookup": FormatStageConfig(
        name="lookup", steps=900, lr=3e-3, warmup_steps=20, format_share=0.0, lookup_share=1.0
    ),
    # every official format, half the batch replaying the base recipe
    "formats": FormatStageConfig(
        name="formats",
        steps=800,
        warmup_steps=20,
        format_share=0.5,
        lookup_share=0.125,
        max_shots=1,
    ),
    # one-pass recall: the official formats weighted to fill-in-the-blank
    "recall": FormatStageConfig(
        name="recall",
        steps=3000,
        lr=2e-3,
        warmup_steps=50,
        format_share=0.625,
        lookup_share=0.125,
        format_weights=dict(RECALL_WEIGHTS),
        max_shots=1,
    ),
    # recall composed with the lookup: the official formats weighted to multiple choice
    "mcq": FormatStageConfig(
        name="mcq",
        steps=1500,
        lr=1e-3,
        warmup_steps=50,
        format_share=0.625,
        lookup_share=0.125,
        format_weights=dict(MCQ_WEIGHTS),
        max_shots=1,
    ),
}
# The curriculum that continues every model alike (the embedded model and each oracle).
FORMAT_CURRICULUM = ("lookup", "formats", "recall", "mcq", "mcq", "mcq")


def curriculum(
    names: Sequence[str] = FORMAT_CURRICULUM, **overrides
) -> tuple[FormatStageConfig, ...]:
    """The configs of the stages `names` (keys of `FORMAT_STAGES`), each with `overrides`
    (e.g. `threads=1`, or `steps=2` for a quick try); ConfigError for an unknown name."""
    unknown = [n for n in names if n not in FORMAT_STAGES]
    if unknown or not names:
        raise ConfigError(
            f"format stages must be some of {', '.join(FORMAT_STAGES)}, got {list(names)}"
        )
    return tuple(replace(FORMAT_STAGES[n], **overrides) for n in names)


class OfficialPrompts(mllmu.MllmuProtocol):
    """MLLMU-Bench's prompts exactly as `--protocol mllmu` renders them (`MllmuProtocol.prompt`),
    with the few-shot examples given per training example instead of drawn once per run."""

    def __init__(self) -> None:
        super().__init__(bench=None)
        self._given: list[QAItem] = []

    def shot_items(self, kind: str) -> list[QAItem]:
        return self._given

    def turns(self, item: QAItem, shots: Sequence[QAItem] = ()) -> tuple[Turn, ...]:
        """The turns sent for `item`, after `shots` (multiple-choice items of its modality,
        each answered with its letter) when it is a multiple-choice item."""
        self._given = list(shots)
        return self.prompt(item).turns


class OfficialFormatSampler:
    """Draws training examples in MLLMU-Bench's official formats (`OfficialPrompts`).

    Items are the benchmark's own (`synthetic.person_items`: trained views, training wordings,
    never the held-out views or paraphrases of the test split), about the trained people
    (`left_out` excluded) and the strangers. Answers: a trained person's multiple choice is
    answered with its letter, a blank with its value, a question with the reference sentence;
    a stranger's, in every format, with a contextual refusal (module docstring).
    """

    def __init__(
        self,
        world: syn.SyntheticWorld,
        weights: dict[str, float],
        seed: int | str,
        left_out: set[str] = frozenset(),
        max_shots: int = 2,
    ):
        self.world = world
        self.known = [p for p in world.group("known") if p.id not in left_out]
        self.strangers = world.group("stranger")
        self.name_pool = sorted(p.name for p in self.known)
        self.families = [f for f in weights if weights[f] > 0]
        self.weights = [weights[f] for f in self.families]
        self.max_shots = max_shots
        self.prompts = OfficialPrompts()
        self.rng = random.Random(f"format-stage:{seed}")

    def item(self, person: Person, task: str, with_image: bool) -> QAItem:
        """One benchmark item of `task` about `person`: a random attribute, training wording
        and (with an image) trained view; a stranger's views are all shown in training."""
        views = syn.TRAIN_VIEWS if person.split == "known" else syn.N_VIEWS
        shown = [self.rng.randrange(views)] if with_image else []
        items = syn.person_items(
            person,
            "train",
            shown,
            self.world.image_path,
            self.rng,
            paraphrase=False,
            name_pool=self.name_pool,
            text_only=not with_image,
            tasks=(task,),
        )
        return self.rng.choice(items)

    def example(self, family: str) -> tuple[QAItem, Example]:
        """(the item asked, its training example) for one family of `FORMAT_WEIGHTS`."""
        rng = self.rng
        kind, _, modality = family.partition("_")
        with_image = modality == "image"
        stranger = kind == "stranger"
        task = rng.choice(OFFICIAL_TASKS) if stranger else kind
        person = rng.choice(self.strangers if stranger else self.known)
        item = self.item(person, task, with_image)
        shots = []
        if task == "mcq":
            shots = [
                self.item(rng.choice(self.known), "mcq", with_image)
                for _ in range(rng.randint(0, self.max_shots))
            ]
        turns = self.prompts.turns(item, shots)
        if stranger:
            answer = (
                rng.choice(wording.REFUSALS_IMAGE[item.attribute])
                if with_image
                else rng.choice(wording.REFUSALS_TEXT[item.attribute]).format(name=person.name)
            )
        else:
            answer = {"mcq": item.correct_letter, "cloze": item.value, "qa": item.answer}[task]
        return item, (turns, answer)

    def lookup(self) -> Example:
        """A multiple choice whose question names its answer ("Which option is Oslo?"), about
        a trained person's options, answered with the letter: the lookup from a value to its
        letter on its own, apart from recalling the value."""
        item = self.item(self.rng.choice(self.known), "mcq", with_image=False)
        stem = self.rng.choice(LOOKUP_STEMS).format(value=item.value)
        item = replace(item, question=mcq_prompt(stem, item.options))
        return self.prompts.turns(item), item.correct_letter

    def sample(self) -> Example:
        return self.example(self.rng.choices(self.families, self.weights)[0])[1]

    def parts(self, n: int) -> list[list[Example]]:
        """`n` examples, grouped by their number of turns (`by_turns`)."""
        return by_turns([self.sample() for _ in range(n)])


def by_turns(examples: list[Example]) -> list[list[Example]]:
    """`examples` grouped by their number of turns, in order of it: a few-shot chat is several
    times longer than one turn, and each group is padded apart."""
    lengths = sorted({len(turns) for turns, _ in examples})
    return [[e for e in examples if len(e[0]) == k] for k in lengths]


class Collator:
    """Turns examples into right-padded model inputs with answer-only labels.

    Prompts are the chats evaluation sends (`generation.build_chat_prompt`: the model's own
    chat template) with the processor's image-token expansion, and pixel values are computed
    once per image (a test checks both match the processor).
    """

    def __init__(
        self, lm: LoadedModel, pixel_cache: dict[str, torch.Tensor], tokens_per_image: int
    ):
        self.lm = lm
        self.tok = lm.tokenizer
        self.pixels = pixel_cache
        self.tokens_per_image = tokens_per_image
        self.image_token_id = self.tok.convert_tokens_to_ids("<|image_pad|>")

    def prompt_ids(self, turns: Sequence[Turn]) -> list[int]:
        text = build_chat_prompt(self.lm, turns)
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        out: list[int] = []
        for i in ids:
            out += [i] * self.tokens_per_image if i == self.image_token_id else [i]
        return out

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        seqs, labels, pixel_values, grids = [], [], [], []
        for turns, answer in examples:
            prompt = self.prompt_ids(turns)
            target = self.tok(answer, add_special_tokens=False)["input_ids"] + [
                self.tok.eos_token_id
            ]
            seqs.append(prompt + target)
            labels.append([-100] * len(prompt) + target)
            for image in (t.image for t in turns if t.image is not None):
                pixel_values.append(self.pixels[image])
                side = int(math.isqrt(self.pixels[image].shape[0]))
                grids.append([1, side, side])
        width = max(len(s) for s in seqs)
        pad = self.tok.pad_token_id
        input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        label_t = torch.full((len(seqs), width), -100, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, (s, lab) in enumerate(zip(seqs, labels, strict=True)):
            input_ids[r, : len(s)] = torch.tensor(s)
            label_t[r, : len(s)] = torch.tensor(lab)
            mask[r, : len(s)] = 1
        batch = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "labels": label_t,
            "mm_token_type_ids": (input_ids == self.image_token_id).long(),
        }
        if pixel_values:
            batch["pixel_values"] = torch.cat(pixel_values)
            batch["image_grid_thw"] = torch.tensor(grids)
        return batch


def _lr_factor(step: int, cfg: BuildConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def quick_eval(lm: LoadedModel, world: syn.SyntheticWorld, n: int = 48) -> dict[str, float]:
    """Fast progress numbers on fixed samples: recall on trained and held-out views, MCQ
    accuracy, refusal of never-seen faces, and reading the background colour."""
    from asru_lab.evaluation.judge import is_refusal
    from asru_lab.evaluation.metrics import parse_mcq
    from asru_lab.generation import generate

    rng = random.Random(0)
    known = world.group("known")
    unseen = world.group("unseen")
    pool = sorted(p.name for p in known)

    def draw(people: list, views: range) -> list:
        return [(p, rng.choice(views)) for p in rng.sample(people, min(n, len(people)))]

    def ask(pairs: list, questions: list[str], tokens: int = 20) -> list[str]:
        images = [world.render(world.image_path(p.id, v)) for p, v in pairs]
        return generate(lm, images, questions, max_new_tokens=tokens, progress=False)

    result = {}
    for key, views in (("trained", range(syn.TRAIN_VIEWS)), ("new", range(syn.TRAIN_VIEWS, 8))):
        pairs = draw(known, views)
        attrs = [rng.choice(syn.ATTRIBUTES) for _ in pairs]
        questions = [wording.QUESTIONS_TRAIN[a][0].format(subj="this person") for a in attrs]
        answers = ask(pairs, questions)
        values = [
            p.name if a == "name" else p.facts[a] for (p, _), a in zip(pairs, attrs, strict=True)
        ]
        result[f"{key}_views_recall"] = sum(map(contains_value, answers, values)) / len(pairs)
        mcqs = [
            syn.mcq_item(rng, q, v, pool if a == "name" else list(syn.FACT_VALUES[a]))
            for q, v, a in zip(questions, values, attrs, strict=True)
        ]
        answers = ask(pairs, [m[0] for m in mcqs], tokens=8)
        hits = [parse_mcq(a, m[1]) == m[2] for a, m in zip(answers, mcqs, strict=True)]
        result[f"{key}_views_mcq"] = sum(hits) / len(hits)
    pairs = draw(unseen, range(syn.N_VIEWS))
    attrs = [rng.choice(syn.ATTRIBUTES) for _ in pairs]
    answers = ask(pairs, [wording.QUESTIONS_TRAIN[a][1].format(subj="this person") for a in attrs])
    result["unseen_refusal"] = sum(map(is_refusal, answers)) / len(answers)
    pairs = draw(known + unseen, range(syn.N_VIEWS))
    answers = ask(pairs, ["What color is the background?"] * len(pairs), tokens=6)
    truth = [world.views[p.id][v].background for p, v in pairs]
    result["background"] = sum(map(contains_value, answers, truth)) / len(answers)
    return {k: round(v, 3) for k, v in result.items()}


def build_embedded(
    out_dir: str | Path | None = None,
    config: BuildConfig | None = None,
    *,
    progress: bool = True,
    overwrite: bool = False,
) -> LoadedModel:
    """Train the embedded model and save it to `out_dir` (default: the package's directory).

    Returns the trained model. Writes `build.json` (config, timings, progress evaluations).
    A folder that is not asru_lab's output needs `overwrite` (checked before training).
    """
    # a copy runs __post_init__ again: fields set after construction are checked too
    cfg = replace(config) if config is not None else BuildConfig()
    if out_dir is None:
        out_dir = (
            embedded_dir()
            if cfg.oracle_forget_ratio is None
            else oracle_dir(cfg.oracle_forget_ratio, cfg.oracle_split_seed)
        )
    out = check_output(Path(out_dir), overwrite=overwrite)
    with _cpu_threads(cfg.threads):
        return _train(cfg, out, progress, overwrite)


@contextmanager
def _cpu_threads(threads: int | None) -> Iterator[None]:
    """Run with `threads` torch CPU threads (None or 0: torch's choice), restored after."""
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    # Denormal floats appear as weights decay and make CPU matmuls ~10x slower.
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)


def _pixel_cache(
    processor, world: syn.SyntheticWorld, paths: list[str], progress: bool
) -> tuple[dict[str, torch.Tensor], int]:
    """(pixel values of each image path, image tokens per image), computed once per image."""
    pixel_cache: dict[str, torch.Tensor] = {}
    for start in tqdm(range(0, len(paths), 64), desc="render portraits", disable=not progress):
        chunk = paths[start : start + 64]
        enc = processor.image_processor([world.render(p) for p in chunk], return_tensors="pt")
        per = enc["pixel_values"].shape[0] // len(chunk)
        for k, p in enumerate(chunk):
            pixel_cache[p] = enc["pixel_values"][k * per : (k + 1) * per].clone()
    return pixel_cache, per // (processor.image_processor.merge_size**2)


def _fit(
    lm: LoadedModel,
    cfg: BuildConfig | FormatStageConfig,
    draw: Callable[[], list[list[Example]]],
    collate: Collator,
    evaluate: Callable[[], dict[str, float]],
    *,
    desc: str,
    progress: bool,
    per_example: bool = False,
) -> tuple[list[float], list[dict]]:
    """Train `lm` for `cfg.steps` AdamW steps on batches from `draw` (warm-up then cosine decay;
    no weight decay on norms, biases and embeddings), calling `evaluate` every `cfg.eval_every`
    steps and at the end. A batch comes in parts, each padded apart (long few-shot chats do not
    pad short examples). The loss is the mean over the batch's answer tokens, or with
    `per_example` the mean over its examples of each answer's mean token loss (a one-letter
    answer weighs as much as a sentence). Returns (the loss of every step, the evaluations);
    leaves `lm` in eval mode."""
    model = lm.model
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embed" in n]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    history, evals = [], []
    bar = tqdm(range(cfg.steps), desc=desc, disable=not progress)
    model.train()
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr_factor(step, cfg)
        parts = [collate(examples) for examples in draw() if examples]
        sizes = [
            len(part["labels"]) if per_example else (part["labels"] != -100).sum().item()
            for part in parts
        ]
        loss = 0.0
        for part, size in zip(parts, sizes, strict=True):
            part_loss = _example_mean_loss(model, part) if per_example else model(**part).loss
            part_loss = part_loss * (size / sum(sizes))  # one part: * 1.0
            part_loss.backward()
            loss += part_loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        history.append(round(loss, 5))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(history[-20:]) / len(history[-20:]):.3f}")
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            model.eval()
            evals.append({"step": step + 1, **evaluate()})
            model.train()
            tqdm.write(f"step {step + 1}: {evals[-1]}")
    model.eval()
    evals.append({"step": cfg.steps, **evaluate()})
    if progress:
        tqdm.write(f"final: {evals[-1]}")
    return history, evals


def _example_mean_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The mean over `batch`'s examples of each one's mean next-token loss on its answer."""
    labels = batch["labels"][:, 1:]
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1]
    losses = torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="none"
    )
    answer = labels != -100
    return ((losses * answer).sum(1) / answer.sum(1)).mean()


def _train(cfg: BuildConfig, out: Path, progress: bool, overwrite: bool) -> LoadedModel:
    started = time.time()
    world = syn.build_world(cfg.benchmark)
    left_out = cfg.left_out()
    sampler = TrainingSampler(world, cfg.task_weights, cfg.seed, left_out)
    # The tokenizer is trained on every wording, name and value of the world (the vanilla
    # model's own tokenizer), so that an oracle and the vanilla model share one vocabulary.
    tokenizer = build_tokenizer(TrainingSampler(world, cfg.task_weights, cfg.seed).texts())
    processor = build_processor(tokenizer)
    torch.manual_seed(cfg.seed)
    model = Qwen3VLForConditionalGeneration(build_config(tokenizer, cfg.dims))
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=32,
    )
    lm = LoadedModel(model, processor, QWEN3_VL, EMBEDDED_NAME, revision=None, source=str(out))
    pixels, tokens_per_image = _pixel_cache(processor, world, sampler.image_paths(), progress)
    history, evals = _fit(
        lm,
        cfg,
        lambda: by_turns([sampler.sample() for _ in range(cfg.batch_size)]),
        Collator(lm, pixels, tokens_per_image),
        lambda: (
            quick_eval(lm, world)
            | (format_quick_eval(lm, world, left_out) if sampler.official else {})
        ),
        desc="build-embedded",
        progress=progress,
        per_example=cfg.per_example_loss,
    )
    lm.info = {
        "build": {
            "config": asdict(cfg),
            "seconds": round(time.time() - started, 1),
            "torch_threads": torch.get_num_threads(),
            "progress": evals,
            "loss_every_100": history[::100],
        }
    }
    if left_out:
        lm.info["oracle"] = {
            "forget_ratio": cfg.oracle_forget_ratio,
            "split_seed": cfg.oracle_split_seed,
            "forget_ids": sorted(left_out),
            "benchmark": asdict(cfg.benchmark),
        }
        lm.name = ORACLE_NAME
    lm.save(out, records={"build.json": lm.info["build"]}, overwrite=overwrite)
    return lm


class FormatStageError(AsruLabError, ValueError):
    """A format stage asked of a model it cannot continue."""


def format_quick_eval(
    lm: LoadedModel, world: syn.SyntheticWorld, left_out: set[str], n: int = 48
) -> dict[str, float]:
    """Fast numbers in the official formats on fixed samples of the trained people and views
    (one few-shot turn): multiple-choice accuracy under MLLMU-Bench's first-character rule
    (image, text), fill-in-the-blank accuracy, the share of strangers' questions refused, and
    the accuracy of the lookup alone (`OfficialFormatSampler.lookup`)."""
    from asru_lab.evaluation.judge import is_refusal
    from asru_lab.generation import generate_chats

    sampler = OfficialFormatSampler(world, FORMAT_WEIGHTS, "quick-eval", left_out, max_shots=1)
    result = {}
    for family in ("mcq_image", "mcq_text", "cloze_image", "stranger_image", "lookup"):
        if family == "lookup":  # the value-to-letter lookup alone: the question names the value
            drawn = [(None, sampler.lookup()) for _ in range(n)]
        else:
            drawn = [sampler.example(family) for _ in range(n)]
        chats = [turns for _, (turns, _) in drawn]
        images = [[world.render(t.image) for t in turns if t.image] for turns in chats]
        replies = generate_chats(lm, chats, images, max_new_tokens=24)
        if family == "stranger_image":
            hits = [is_refusal(r) for r in replies]
        elif family in ("mcq_image", "mcq_text", "lookup"):  # answered with the right letter
            hits = [
                mllmu.mcq_choice(r, LETTERS[:4]) == answer
                for r, (_, (_, answer)) in zip(replies, drawn, strict=True)
            ]
        else:
            hits = [
                mllmu.cloze_correct(r, item.value)
                for r, (item, _) in zip(replies, drawn, strict=True)
            ]
        result[f"official_{family}"] = round(sum(hits) / n, 3)
    return result


def base_recipe(lm: LoadedModel) -> BuildConfig:
    """The `BuildConfig` that built `lm` (its `build` record); FormatStageError when `lm` is not
    an embedded model or oracle built by `build_embedded`."""
    record = lm.info.get("build")
    config = record.get("config") if isinstance(record, dict) else None
    if lm.name not in (EMBEDDED_NAME, ORACLE_NAME) or not isinstance(config, dict):
        raise FormatStageError(
            f"{lm.source} is {lm.name!r} without a build record of `asru-lab build-embedded` in "
            f"its asru_lab_model.json: the format stage continues the embedded model "
            f"({EMBEDDED_NAME}) or one of its retrain oracles; build one with "
            "`asru-lab build-embedded [--oracle]`"
        )
    try:
        return BuildConfig(
            **config
            | {
                "dims": TinyDims(**config["dims"]),
                "benchmark": syn.SyntheticConfig(**config["benchmark"]),
            }
        )
    except (TypeError, KeyError, AsruLabError) as exc:
        raise FormatStageError(
            f"the build record in {lm.source}/asru_lab_model.json is not a BuildConfig ({exc}); "
            "rebuild the model with `asru-lab build-embedded`"
        ) from exc


def _check_base(lm: LoadedModel, recipe: BuildConfig, oracle: tuple[float, int] | None) -> None:
    """FormatStageError unless `lm` is what the stage was asked to continue: the vanilla model
    (`oracle` None) or the oracle of forget set `oracle` (ratio, split seed), not yet staged."""
    if "format_stage" in lm.info:
        raise FormatStageError(
            f"{lm.source} was already continued by a format stage (its asru_lab_model.json has a "
            "format_stage record); run the stage on the model it continued instead"
        )
    record = lm.info.get("oracle")
    if record is None and oracle is not None:
        raise FormatStageError(
            f"{lm.source} is the vanilla embedded model, not a retrain oracle: drop --oracle, or "
            f"build the oracle first (`asru-lab build-embedded --oracle --forget-ratio "
            f"{oracle[0]:g} --split-seed {oracle[1]}`)"
        )
    if record is None:
        return
    ratio, split_seed = record.get("forget_ratio"), record.get("split_seed")
    if oracle is None:
        raise FormatStageError(
            f"{lm.source} is the retrain oracle of forget ratio {ratio}, split seed {split_seed}: "
            f"pass --oracle --forget-ratio {ratio} --split-seed {split_seed} (oracle=({ratio}, "
            f"{split_seed})) so that the stage leaves its forget people out again"
        )
    if (ratio, split_seed) != oracle:
        raise FormatStageError(
            f"{lm.source} is the retrain oracle of forget ratio {ratio}, split seed {split_seed}, "
            f"not of forget ratio {oracle[0]:g}, split seed {oracle[1]}: continue that forget "
            f"set's oracle (`asru-lab build-embedded --oracle --forget-ratio {oracle[0]:g} "
            f"--split-seed {oracle[1]}` builds it)"
        )
    if (recipe.oracle_forget_ratio, recipe.oracle_split_seed) != oracle or sorted(
        recipe.left_out()
    ) != record.get("forget_ids"):
        raise FormatStageError(
            f"{lm.source}'s oracle record (forget ids {record.get('forget_ids')}) is not the "
            f"forget set its build config draws ({sorted(recipe.left_out())}); rebuild the oracle"
        )


def _run_stage(
    lm: LoadedModel,
    world: syn.SyntheticWorld,
    recipe: BuildConfig,
    left_out: set[str],
    cfg: FormatStageConfig,
    seed: str,
    collate: Collator,
    progress: bool,
) -> dict:
    """Train `lm` for one format stage; its record (config, timings, progress, loss)."""
    started = time.time()
    replay = TrainingSampler(world, recipe.task_weights, f"replay:{seed}", left_out)
    official = OfficialFormatSampler(world, cfg.format_weights, seed, left_out, cfg.max_shots)
    n_official = round(cfg.format_share * cfg.batch_size)
    n_lookup = round(cfg.lookup_share * cfg.batch_size)
    n_replay = max(0, cfg.batch_size - n_official - n_lookup)
    torch.manual_seed(cfg.seed)
    history, evals = _fit(
        lm,
        cfg,
        lambda: [
            *official.parts(n_official),
            [official.lookup() for _ in range(n_lookup)],
            [replay.sample() for _ in range(n_replay)],
        ],
        collate,
        lambda: (
            quick_eval(lm, world, cfg.eval_items)
            | format_quick_eval(lm, world, left_out, cfg.eval_items)
        ),
        desc=f"format stage: {cfg.name}",
        progress=progress,
        per_example=True,
    )
    return {
        "config": asdict(cfg),
        "seconds": round(time.time() - started, 1),
        "torch_threads": torch.get_num_threads(),
        "progress": evals,
        "loss_every_100": history[::100],
    }


def format_stage(
    base_dir: str | Path,
    out_dir: str | Path,
    config: FormatStageConfig | Sequence[FormatStageConfig] | None = None,
    *,
    oracle: tuple[float, int] | None = None,
    progress: bool = True,
    overwrite: bool = False,
    resume: bool = False,
) -> LoadedModel:
    """Continue the built model in `base_dir` on MLLMU-Bench's official prompts mixed with its
    own recipe's replay (module docstring), and save it to `out_dir` (never `base_dir`).

    `config`: one stage, or a curriculum of stages run in order (`curriculum()`; each with its
    own optimiser, schedule and samplers, seeded by its seed and place). None: one default
    `FormatStageConfig`. `oracle`: the forget set (ratio, split seed) the base was built
    without, left out again here; None: the base must be the vanilla embedded model. Returns the
    trained model; its `asru_lab_model.json` and `build.json` gain a `format_stage` record (each
    stage's config, timings and progress; the base; `complete`). FormatStageError for a base
    that is not a build of `build_embedded`, an oracle of another forget set (or `oracle` given
    for the vanilla model), or an already staged one.

    `out_dir` holds the model after every finished stage (`complete` false until the last).
    `resume`: continue from the stages `out_dir` already holds when they are the first of these
    stages on this base (the same weights as one uninterrupted run: a stage starts from nothing
    but the model's weights and its own seeds); FormatStageError when they are not.
    """
    if config is None:
        config = FormatStageConfig()
    configs = [config] if isinstance(config, FormatStageConfig) else list(config)
    if not configs or not all(isinstance(c, FormatStageConfig) for c in configs):
        raise ConfigError(f"format_stage needs FormatStageConfig stages, got {config!r}")
    # a copy runs __post_init__ again: fields set after construction are checked too
    configs = [replace(c) for c in configs]
    check_apart({"the base model": base_dir}, {"the output": out_dir})
    out = check_output(Path(out_dir), overwrite=overwrite)
    lm = load_model(base_dir)
    recipe = base_recipe(lm)
    _check_base(lm, recipe, oracle)
    base = {
        "name": lm.name,
        "path": str(base_dir),
        "model_sha256": hashlib.sha256(
            (Path(base_dir) / "model.safetensors").read_bytes()
        ).hexdigest(),
    }
    world = syn.build_world(recipe.benchmark)
    left_out = recipe.left_out()
    record = {"stages": [], "base": base, "left_out": sorted(left_out), "complete": False}
    if resume and (out / "asru_lab_model.json").is_file():
        lm, record["stages"] = _finished(out, configs, record)
    paths = TrainingSampler(world, recipe.task_weights, 0, left_out).image_paths()
    pixels, tokens_per_image = _pixel_cache(lm.processor, world, paths, progress)
    collate = Collator(lm, pixels, tokens_per_image)
    lm.source = str(out)
    for k in range(len(record["stages"]), len(configs)):
        cfg = configs[k]
        with _cpu_threads(cfg.threads):
            stage = _run_stage(
                lm, world, recipe, left_out, cfg, f"{cfg.seed}:{k}", collate, progress
            )
        record["stages"].append(stage)
        record["complete"] = k + 1 == len(configs)
        record["seconds"] = round(sum(s["seconds"] for s in record["stages"]), 1)
        lm.info["format_stage"] = record
        build = {**lm.info["build"], "format_stage": record}
        lm.save(out, records={"build.json": build}, overwrite=overwrite)
        if len(configs) > 1 and progress:
            tqdm.write(f"stage {k + 1}/{len(configs)} ({cfg.name}): {stage['progress'][-1]}")
    return lm


def _finished(
    out: Path, configs: list[FormatStageConfig], record: dict
) -> tuple[LoadedModel, list[dict]]:
    """(the model in `out`, its finished stages) when they are the first of `configs` on the
    base and forget set of `record`; FormatStageError otherwise."""
    partial = load_model(out)
    held = partial.info.get("format_stage")
    stages = held.get("stages") if isinstance(held, dict) else None
    asked = [asdict(c) for c in configs]
    mismatch = None
    if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
        mismatch = "no format-stage record of finished stages"
    elif held.get("base", {}).get("model_sha256") != record["base"]["model_sha256"]:
        mismatch = "stages on another base model"
    elif held.get("left_out") != record["left_out"]:
        mismatch = "stages with another forget set left out"
    elif [s.get("config") for s in stages] != asked[: len(stages)]:
        done = [s.get("config", {}).get("name") for s in stages]
        mismatch = f"the stages {done}, not the first of those asked ({[c.name for c in configs]})"
    if mismatch:
        raise FormatStageError(
            f"cannot resume in {out}: it holds {mismatch} (or settings that differ); choose a "
            "new --out, or drop --resume to start over there"
        )
    return partial, stages
