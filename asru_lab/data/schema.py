"""The benchmark schema: people, question items and the benchmark that holds them.

Every data source (the synthetic benchmark, a user JSONL directory, MLLMU-Bench parquet) is
turned into these objects, so evaluation and the unlearning stages never see a file format.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image

from asru_lab.data.files import BenchmarkError, dataset_file, open_image

# Splits a question item may belong to. `stranger` holds training-only refusal data.
EVAL_SPLITS = ("forget", "retain", "test", "general", "unseen", "real")
ITEM_SPLITS = (*EVAL_SPLITS, "stranger")
# Splits a person may belong to.
PERSON_SPLITS = ("forget", "retain", "unseen", "stranger", "real", "known")
TASKS = ("qa", "mcq", "cloze")
LETTERS = "ABCDEFGH"
# How many decoded pixels the image cache keeps (768 MB as RGB): all the synthetic portraits,
# without holding thousands of camera photos in memory.
CACHE_PIXELS = 2**28


@dataclass(frozen=True)
class Person:
    """One profile: a stable id, a display name, the split it belongs to and its facts."""

    id: str
    name: str
    split: str
    facts: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class QAItem:
    """One evaluation or training question.

    `task` is `qa` (free generation), `mcq` (options + index of the correct one) or `cloze`
    (`question` holds the sentence with a blank `___`). `value` is the short ground truth that
    leak / recall / cloze checks look for (a fact value, a colour, ...); `answer` is the
    reference answer used for ROUGE-L.

    For the probability metrics (`evaluation.probability`, open-unlearning's truth ratio and
    forget quality), a `qa` item may carry a `paraphrased_answer` (the reference answer
    reworded, same facts) and `perturbed_answers` (the same wording with wrong facts).
    """

    split: str
    task: str
    person_id: str | None
    image: str | None
    question: str
    answer: str
    attribute: str
    value: str
    options: tuple[str, ...] | None = None
    correct: int | None = None
    paraphrased_answer: str | None = None
    perturbed_answers: tuple[str, ...] = ()

    @property
    def has_truth_ratio(self) -> bool:
        """True when the item has what a truth ratio needs: a paraphrase and wrong answers."""
        return bool(self.paraphrased_answer) and bool(self.perturbed_answers)

    @property
    def has_image(self) -> bool:
        return self.image is not None

    @property
    def correct_letter(self) -> str | None:
        return None if self.correct is None else LETTERS[self.correct]


ImageLoader = Callable[[str], Image.Image]


def normalize_text(text: str) -> str:
    """Lower-case, punctuation to spaces, whitespace collapsed: the form used for matching."""
    text = text.lower().replace("’", "'")
    text = re.sub(r"[^0-9a-z']+", " ", text)
    return " ".join(text.split())


def contains_value(answer: str, value: str) -> bool:
    """True when the normalised `value` occurs in the normalised `answer` as whole words."""
    needle = normalize_text(value)
    if not needle:
        return False
    return f" {needle} " in f" {normalize_text(answer)} "


class Benchmark:
    """People + question items + a way to open the images they refer to.

    `root` is the dataset directory image paths are relative to, none leading outside it (None
    for a source built in code, whose paths are opened as given);
    `image_loader` overrides how a path becomes a PIL image (the synthetic benchmark draws
    its portraits on demand instead of reading files).
    """

    def __init__(
        self,
        people: Iterable[Person],
        items: Iterable[QAItem],
        *,
        name: str,
        root: Path | None = None,
        image_loader: ImageLoader | None = None,
        meta: dict | None = None,
        value_pools: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.people: dict[str, Person] = {}
        for person in people:
            if person.id in self.people:
                raise BenchmarkError(f"person id {person.id!r} appears twice in {name}")
            self.people[person.id] = person
        self.items: list[QAItem] = list(items)
        self.name = name
        self.root = Path(root) if root is not None else None
        self._image_loader = image_loader
        self.meta = dict(meta or {})
        # values an attribute can take beyond those in people and items (the synthetic world's
        # whole vocabulary): a judge counts any of them in an answer as a hallucination
        self.declared_pools = {a: tuple(v) for a, v in (value_pools or {}).items()}
        self._image_cache: dict[str, Image.Image] = {}
        self._cached_pixels = 0
        self._fingerprint: tuple | None = None

    # --- access -----------------------------------------------------------------------------
    def split(self, split: str, task: str | None = None) -> list[QAItem]:
        """Items of one split (and optionally one task), in a stable order."""
        if split not in ITEM_SPLITS:
            raise BenchmarkError(f"unknown split {split!r}; expected one of {ITEM_SPLITS}")
        return [i for i in self.items if i.split == split and (task is None or i.task == task)]

    def splits(self) -> list[str]:
        """The evaluation splits that hold at least one item, in the canonical order."""
        present = {i.split for i in self.items}
        return [s for s in EVAL_SPLITS if s in present]

    def questions(
        self,
        split: str,
        tasks: str | Sequence[str] | None = None,
        *,
        image_only: bool = False,
    ) -> list[QAItem]:
        """Items of `split` whose task is one of `tasks` (a task, a sequence, or None for all),
        in a stable order; `image_only`: only items asked about an image."""
        if isinstance(tasks, str):
            tasks = (tasks,)
        for task in tasks or ():
            if task not in TASKS:
                raise BenchmarkError(f"unknown task {task!r}; expected some of {', '.join(TASKS)}")
        return [
            i
            for i in self.split(split)
            if (tasks is None or i.task in tasks) and (i.image or not image_only)
        ]

    def images(self, items: Iterable[QAItem]) -> list[Image.Image | None]:
        """Each item's image (None for a text-only item), opened as `load_image` opens it."""
        return [self.load_image(i.image) if i.image else None for i in items]

    def value_pools(self) -> dict[str, set[str]]:
        """Per attribute ("name", "birthplace", ...), every value it takes in this benchmark:
        the declared pools, people's names and facts, and items' values."""
        pools: dict[str, set[str]] = {a: set(v) for a, v in self.declared_pools.items()}
        for person in self.people.values():
            pools.setdefault("name", set()).add(person.name)
            for attribute, value in person.facts.items():
                pools.setdefault(attribute, set()).add(value)
        for item in self.items:
            pools.setdefault(item.attribute, set()).add(item.value)
        return pools

    def people_in(self, split: str) -> list[Person]:
        return [p for p in self.people.values() if p.split == split]

    def load_image(self, path: str) -> Image.Image:
        """Open an item's image as RGB; a clear error if it is missing, not an image, over the
        pixel budget or (with a `root`) outside the dataset directory (`data.files`)."""
        if path in self._image_cache:
            return self._image_cache[path]
        if self._image_loader is not None:
            image = self._image_loader(path)
        elif self.root is None:  # built in code: its paths are the caller's own
            image = open_image(Path(path))
        else:
            image = open_image(
                dataset_file(self.root, path, str(self.root)), f"image {path!r} of {self.root}"
            )
        pixels = image.width * image.height
        if self._cached_pixels + pixels <= CACHE_PIXELS:
            self._image_cache[path] = image
            self._cached_pixels += pixels
        return image

    def subset(
        self,
        items: Sequence[QAItem],
        *,
        people: Iterable[Person] | None = None,
        name: str | None = None,
        meta: dict | None = None,
    ) -> Benchmark:
        """A benchmark with the same image source but only `items` (and, when given, these
        `people`, `name` and `meta` instead of this one's)."""
        return Benchmark(
            self.people.values() if people is None else people,
            items,
            name=self.name if name is None else name,
            root=self.root,
            image_loader=self._image_loader,
            meta=self.meta if meta is None else meta,
            value_pools=self.declared_pools,
        )

    def fingerprint(self) -> str:
        """A short hash of people and items (not image bytes): identifies the data in artifacts.

        Cached while the same (immutable) item and person objects are in the benchmark.
        """
        key = (tuple(map(id, self.items)), tuple(map(id, self.people.values())))
        if self._fingerprint is None or self._fingerprint[0] != key:
            self._fingerprint = (key, self._compute_fingerprint())
        return self._fingerprint[1]

    def _compute_fingerprint(self) -> str:
        h = hashlib.sha256()
        for p in sorted(self.people.values(), key=lambda p: p.id):
            h.update(json.dumps([p.id, p.name, p.split, p.facts], sort_keys=True).encode())
        for i in self.items:
            h.update(
                json.dumps(
                    [i.split, i.task, i.person_id, i.image, i.question, i.answer, i.value],
                    sort_keys=True,
                ).encode()
            )
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        counts = {s: len(self.split(s)) for s in self.splits()}
        return f"Benchmark({self.name!r}, people={len(self.people)}, items={counts})"

    def validate(self, where: Callable[[Sequence[int]], str] | None = None) -> None:
        """Check the invariants every loader must hold; raise BenchmarkError naming the problem
        (`where` names items by their indices, e.g. as lines of a file; default: by position)."""
        forget = {p.id for p in self.people.values() if p.split == "forget"}
        for item in self.items:
            if item.split not in ITEM_SPLITS:
                raise BenchmarkError(f"item has unknown split {item.split!r}: {item.question!r}")
            if item.task not in TASKS:
                raise BenchmarkError(f"item has unknown task {item.task!r}: {item.question!r}")
            if item.person_id is not None and item.person_id not in self.people:
                raise BenchmarkError(
                    f"item refers to person {item.person_id!r}, which has no profile: "
                    f"{item.question!r}"
                )
            if item.task == "mcq" and (
                not item.options
                or item.correct is None
                or not 0 <= item.correct < len(item.options)
            ):
                raise BenchmarkError(
                    f"multiple-choice item without valid options: {item.question!r}"
                )
            if item.split == "test" and item.person_id is not None and item.person_id not in forget:
                raise BenchmarkError(
                    f"test item about {item.person_id!r}, who is not in the forget split "
                    "(the test split holds the forget people only)"
                )
        for split in ("forget", "retain"):
            if self.people_in(split) and not self.split(split):
                raise BenchmarkError(f"split {split!r} has people but no question items")
        check_questions(self.items, where or items_at)


def items_at(indices: Sequence[int]) -> str:
    """Items named by their 1-based positions in the benchmark."""
    return ("item " if len(indices) == 1 else "items ") + ", ".join(str(k + 1) for k in indices)


def question_key(item: QAItem) -> tuple:
    """What makes two items one question: the same split, task, person, image (as a normalised
    path), options, and question words (case and spacing aside). One wording asked about two
    images, or about two people, is two questions."""
    image = None if item.image is None else str(PurePosixPath(item.image))
    words = " ".join(item.question.split()).casefold()
    return (item.split, item.task, item.person_id, image, item.options, words)


def check_questions(items: Sequence[QAItem], where: Callable[[Sequence[int]], str]) -> None:
    """Raise a BenchmarkError naming the items (`where`) that have an empty question, answer or
    ground truth, or that ask a question already asked: each would be scored without a word."""
    for k, item in enumerate(items):
        for name, text in (("question", item.question), ("answer", item.answer)):
            if not text.strip():
                raise BenchmarkError(
                    f"{where([k])}: the {name} is empty ({text!r}); write it, or remove the item"
                )
        if not item.value.strip():
            raise BenchmarkError(
                f"{where([k])}: its short ground truth is empty (value {item.value!r}, from the "
                f"answer {item.answer!r}); no reply could ever match it: give a 'value' or an "
                "answer with words in it"
            )
    groups: dict[tuple, list[int]] = {}
    for k, item in enumerate(items):
        groups.setdefault(question_key(item), []).append(k)
    repeated = [ks for ks in groups.values() if len(ks) > 1]
    if repeated:
        first = repeated[0]
        item = items[first[0]]
        others = f" ({len(repeated) - 1} more questions are repeated)" if len(repeated) > 1 else ""
        raise BenchmarkError(
            f"{where(first)} ask the same {item.task} question {len(first)} times (split "
            f"{item.split!r}, person {item.person_id!r}, image {item.image!r}: "
            f"{shorten(item.question)!r}){others}; each copy would be scored as another item: "
            "keep one"
        )


def shorten(text: str, limit: int = 60) -> str:
    """`text`, cut to `limit` characters with "..." when longer."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def stratified_sample(items: Sequence[QAItem], n: int, rng: random.Random) -> list[QAItem]:
    """Up to `n` items spread evenly over (person, task, image or text-only) strata.

    Even spreading matters wherever a sample stands for a split: a person whose text-only
    questions a probe never saw is the one it gets wrong.
    """
    items = list(items)
    if len(items) <= n:
        return items
    strata: dict[tuple, list[QAItem]] = {}
    for item in items:
        strata.setdefault((item.person_id, item.task, item.image is None), []).append(item)
    queues = [rng.sample(group, len(group)) for _, group in sorted(strata.items())]
    picked: list[QAItem] = []
    while len(picked) < n:
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop())
    return picked
