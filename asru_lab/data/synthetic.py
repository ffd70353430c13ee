"""The synthetic profiles benchmark: MLLMU-Bench in miniature, deterministic from a seed.

People and facts are fixed by `SyntheticConfig.seed` (the embedded model was trained on
them); `forget_ratio` and `split_seed` only choose which known people are forgotten.

Groups of people:
- known (forget + retain): the embedded model memorised their portraits and facts;
- strangers: shown in training only, always answered with a contextual refusal;
- unseen: never shown at all; the `unseen` split and the stage-1.1 target set.

Views 0..TRAIN_VIEWS-1 of a known person are trained; the rest only appear in `test`
(forget people) and `general`. Question wordings come in a training set and a held-out
paraphrase set (the `test` split uses the paraphrases).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache

from PIL import Image

from asru_lab.data.portraits import (
    Appearance,
    View,
    draw_appearances,
    draw_view,
    render_portrait,
)
from asru_lab.data.prompts import CLOZE_PREFIX, mcq_prompt
from asru_lab.data.schema import Benchmark, BenchmarkError, Person, QAItem
from asru_lab.data.synthetic_text import (
    CLOZE_TEST,
    CLOZE_TRAIN,
    PICTURE_QUESTIONS_TEST,
    PICTURE_QUESTIONS_TRAIN,
    QUESTIONS_TEST,
    QUESTIONS_TRAIN,
    REFUSALS_IMAGE,
    answer_sentence,
    paraphrased_sentence,
)
from asru_lab.validation import check_fields

N_VIEWS = 8
TRAIN_VIEWS = 6

FIRST_NAMES = (
    "Alma Boris Celia Dario Elin Farid Greta Hugo Ines Jonas Kaia Lars Mira Nils Oona Pavel "
    "Quinn Rosa Silas Tilda Umar Vera Wendel Xenia Yusuf Zora Anton Bette Cyril Dagny Emil "
    "Fiona Gideon Halle Ivo Jana Kasper Lena Matteo Nadia Otto Pia Rufus Saskia Tobias Ulla "
    "Viggo Wilma Yara Zeno"
).split()
LAST_NAMES = (
    "Abbing Brandt Castell Dorran Eckley Falk Garrow Holm Ibsen Jarvik Kessler Lund Marlow "
    "Norberg Ostrand Pryce Quist Rook Stavros Thorne Ulvang Varga Wexley Yarrow Zeller Aldous "
    "Birk Corwin Dahl Ember Finch Gallo Hadley Ivers Juno Krantz Lark Mercer Nash Orrin Pike "
    "Rasmus Sorel Tarrant Vance Wilder Brody Calloway Denholm Everly"
).split()

FACT_VALUES: dict[str, tuple[str, ...]] = {
    "birthplace": tuple(
        "Lisbon Oslo Krakow Nairobi Lima Osaka Dublin Tallinn Porto Quito Accra Hanoi Bergen "
        "Seville Tbilisi Riga Bogota Durban Perth Halifax Turin Ghent Cork Leipzig Mombasa "
        "Valparaiso Tromso Bruges Cusco Salzburg".split()
    ),
    "occupation": (
        "architect",
        "baker",
        "carpenter",
        "dentist",
        "engineer",
        "florist",
        "geologist",
        "historian",
        "illustrator",
        "journalist",
        "lawyer",
        "librarian",
        "mechanic",
        "nurse",
        "optician",
        "pharmacist",
        "pilot",
        "plumber",
        "potter",
        "surgeon",
        "tailor",
        "teacher",
        "translator",
        "veterinarian",
        "violinist",
        "welder",
        "zoologist",
        "chemist",
        "chef",
        "firefighter",
    ),
    "birth_year": tuple(str(y) for y in range(1952, 2004)),
    "hobby": (
        "archery",
        "birdwatching",
        "bouldering",
        "calligraphy",
        "chess",
        "cycling",
        "fencing",
        "fishing",
        "gardening",
        "hiking",
        "juggling",
        "kayaking",
        "knitting",
        "origami",
        "painting",
        "photography",
        "pottery",
        "rowing",
        "sailing",
        "skating",
        "snorkeling",
        "stargazing",
        "surfing",
        "woodcarving",
        "yoga",
        "baking",
        "dancing",
        "sketching",
    ),
    "pet": (
        "dog",
        "cat",
        "parrot",
        "rabbit",
        "hamster",
        "turtle",
        "goldfish",
        "horse",
        "ferret",
        "lizard",
        "canary",
        "tortoise",
        "hedgehog",
        "snake",
        "chinchilla",
        "goat",
    ),
}
FACTS = tuple(FACT_VALUES)
ATTRIBUTES = ("name", *FACTS)
PICTURE_ATTRIBUTES = ("background", "shirt", "hair")


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and seed of the synthetic benchmark (fixed by the embedded build)."""

    seed: int = field(
        default=1234, metadata={"help": "draws the people, their facts, looks and views"}
    )
    n_known: int = field(
        default=120,
        metadata={"help": "people the embedded model memorised (the forget and retain splits)"},
    )
    n_strangers: int = field(
        default=400,
        metadata={"help": "people shown in training only, always with a contextual refusal"},
    )
    n_unseen: int = field(
        default=48,
        metadata={"help": "people never shown (the unseen split and the stage 1.1 targets)"},
    )
    min_trait_distance: int = field(
        default=4,
        metadata={
            "help": "least number of the 9 traits in which two known people differ, and every "
            "unseen person from every known one"
        },
    )
    # strangers are nearer misses: the model learns that refusing depends on not knowing a face
    stranger_distance: int = field(
        default=3,
        metadata={
            "help": "least number of the 9 traits in which a stranger differs from the known"
        },
    )

    def __post_init__(self) -> None:
        check_fields(
            self,
            BenchmarkError,
            n_known=">= 1",
            n_strangers=">= 0",
            n_unseen=">= 0",
            min_trait_distance=">= 0",
            stranger_distance=">= 0",
        )


@dataclass(frozen=True)
class SyntheticWorld:
    """Everything drawn from the seed: people, their appearance and their views."""

    config: SyntheticConfig
    people: tuple[Person, ...]
    looks: dict[str, Appearance]
    views: dict[str, tuple[View, ...]]

    def image_path(self, person_id: str, view: int) -> str:
        return f"images/{person_id}_v{view}.png"

    def render(self, path: str) -> Image.Image:
        """Draw the image behind a synthetic path `images/<id>_v<k>.png`."""
        try:
            stem = path.rsplit("/", 1)[-1].removesuffix(".png")
            person_id, view = stem.rsplit("_v", 1)
            return render_portrait(self.looks[person_id], self.views[person_id][int(view)])
        except (KeyError, ValueError, IndexError) as exc:
            raise BenchmarkError(f"no synthetic image at {path!r}") from exc

    def group(self, name: str) -> list[Person]:
        return [p for p in self.people if p.split == name]


@lru_cache(maxsize=4)
def build_world(config: SyntheticConfig = SyntheticConfig()) -> SyntheticWorld:
    """Draw people, names, facts, appearances and views from `config.seed`."""
    rng = random.Random(config.seed)
    total = config.n_known + config.n_strangers + config.n_unseen
    known = draw_appearances(config.n_known, rng, config.min_trait_distance)
    unseen = draw_appearances(
        config.n_unseen, rng, 2, keep_away=((known, config.min_trait_distance),)
    )
    strangers = draw_appearances(
        config.n_strangers, rng, 1, keep_away=((known, config.stranger_distance), (unseen, 2))
    )
    looks = known + strangers + unseen
    pairs = [(f, s) for f in FIRST_NAMES for s in LAST_NAMES]
    rng.shuffle(pairs)
    if total > len(pairs):
        raise BenchmarkError(f"only {len(pairs)} distinct names for {total} people")
    groups = (
        ["known"] * config.n_known
        + ["stranger"] * config.n_strangers
        + ["unseen"] * config.n_unseen
    )
    prefix = {"known": "k", "stranger": "s", "unseen": "u"}
    counters = dict.fromkeys(prefix, 0)
    people, look_of, views = [], {}, {}
    for idx, group in enumerate(groups):
        pid = f"{prefix[group]}{counters[group]:03d}"
        counters[group] += 1
        first, last = pairs[idx]
        facts = {attr: rng.choice(vals) for attr, vals in FACT_VALUES.items()}
        people.append(Person(id=pid, name=f"{first} {last}", split=group, facts=facts))
        look_of[pid] = looks[idx]
        views[pid] = tuple(draw_view(rng) for _ in range(N_VIEWS))
    return SyntheticWorld(config, tuple(people), look_of, views)


def choose_forget(known: list[Person], forget_ratio: float, split_seed: int) -> set[str]:
    """Ids of the forgotten people: `forget_ratio` of the known people, drawn by `split_seed`."""
    if not 0 < forget_ratio < 1:
        raise BenchmarkError(f"forget_ratio must be a fraction in (0, 1), got {forget_ratio}")
    n = max(1, round(forget_ratio * len(known)))
    ids = sorted(p.id for p in known)
    return set(random.Random(split_seed).sample(ids, n))


def mcq_item(
    rng: random.Random, question: str, value: str, pool: list[str]
) -> tuple[str, tuple, int]:
    """(prompt, options, index of `value`): `value` and three distractors from `pool`, shuffled."""
    distractors = rng.sample([v for v in pool if v != value], 3)
    options = [value, *distractors]
    rng.shuffle(options)
    return mcq_prompt(question, options), tuple(options), options.index(value)


def attribute_pool(attribute: str, people: list[Person]) -> list[str]:
    if attribute == "name":
        return sorted({p.name for p in people})
    return list(FACT_VALUES[attribute])


PERTURBED_ANSWERS = 5  # as TOFU: five wrong answers per question


def truth_ratio_answers(
    person: Person, attribute: str, value: str, pool: list[str]
) -> tuple[str, tuple[str, ...]]:
    """The paraphrased answer and `PERTURBED_ANSWERS` perturbed ones (the same sentence with
    other values of the attribute) for one of `person`'s facts. Drawn from their own seed, so
    adding them left every other draw of the benchmark as it was."""
    rng = random.Random(f"perturbed:{person.id}:{attribute}")
    wrong = rng.sample(sorted(set(pool) - {value}), PERTURBED_ANSWERS)

    def sentence(fact: str) -> str:
        name = fact if attribute == "name" else person.name
        return paraphrased_sentence(attribute, name, fact)

    return sentence(value), tuple(sentence(w) for w in wrong)


def person_items(
    person: Person,
    split: str,
    views: list[int],
    image_path,
    rng: random.Random,
    *,
    paraphrase: bool,
    name_pool: list[str],
    text_only: bool = True,
    tasks: tuple[str, ...] = ("qa", "mcq", "cloze"),
) -> list[QAItem]:
    """Question items about one known person: image QA per view, text QA, MCQ and cloze."""
    questions = QUESTIONS_TEST if paraphrase else QUESTIONS_TRAIN
    clozes = CLOZE_TEST if paraphrase else CLOZE_TRAIN
    items: list[QAItem] = []

    def ask(attr: str, image: str | None, subj: str, subj_cap: str) -> None:
        value = person.name if attr == "name" else person.facts[attr]
        pool = name_pool if attr == "name" else list(FACT_VALUES[attr])
        question = rng.choice(questions[attr]).format(subj=subj)
        if "qa" in tasks:
            answer = answer_sentence(attr, person.name, value)
            paraphrased, perturbed = truth_ratio_answers(person, attr, value, pool)
            items.append(
                QAItem(
                    split,
                    "qa",
                    person.id,
                    image,
                    question,
                    answer,
                    attr,
                    value,
                    paraphrased_answer=paraphrased,
                    perturbed_answers=perturbed,
                )
            )
        if "mcq" in tasks:
            stem = rng.choice(questions[attr]).format(subj=subj)
            text, options, correct = mcq_item(rng, stem, value, pool)
            # The open question's sentence ("<name> was born in <option>."): naming the person
            # first lets a tiny model recall the fact through the name, which it learns far
            # faster than mapping a recalled value to its letter.
            answer = answer_sentence(attr, person.name, value)
            items.append(
                QAItem(split, "mcq", person.id, image, text, answer, attr, value, options, correct)
            )
        if "cloze" in tasks:
            text = CLOZE_PREFIX + clozes[attr].format(subj=subj, subj_cap=subj_cap)
            items.append(QAItem(split, "cloze", person.id, image, text, value, attr, value))

    for attr in ATTRIBUTES:
        for view in views:
            ask(attr, image_path(person.id, view), "this person", "This person")
        if text_only and attr != "name":
            ask(attr, None, person.name, person.name)
    return items


def picture_value(world: SyntheticWorld, person_id: str, view: int, attribute: str) -> str:
    look = world.looks[person_id]
    return {
        "background": world.views[person_id][view].background,
        "shirt": look.shirt,
        "hair": look.hair_color,
    }[attribute]


def picture_items(
    world: SyntheticWorld,
    person_id: str,
    views: list[int],
    rng: random.Random,
    *,
    paraphrase: bool,
    split: str = "general",
) -> list[QAItem]:
    questions = PICTURE_QUESTIONS_TEST if paraphrase else PICTURE_QUESTIONS_TRAIN
    items = []
    for view in views:
        for attr in PICTURE_ATTRIBUTES:
            value = picture_value(world, person_id, view, attr)
            q = rng.choice(questions[attr])
            items.append(
                QAItem(
                    split,
                    "qa",
                    person_id,
                    world.image_path(person_id, view),
                    q,
                    f"{value.capitalize()}.",
                    attr,
                    value,
                )
            )
    return items


def refusal_items(
    person: Person, views: list[int], image_path, rng: random.Random, split: str
) -> list[QAItem]:
    """Image questions about someone the model does not know; the reference is a refusal."""
    items = []
    for view in views:
        for attr in ATTRIBUTES:
            q = rng.choice(QUESTIONS_TRAIN[attr]).format(subj="this person")
            value = person.name if attr == "name" else person.facts[attr]
            items.append(
                QAItem(
                    split,
                    "qa",
                    person.id,
                    image_path(person.id, view),
                    q,
                    rng.choice(REFUSALS_IMAGE[attr]),
                    attr,
                    value,
                )
            )
    return items


def load_synthetic(
    forget_ratio: float = 0.1,
    split_seed: int = 0,
    config: SyntheticConfig = SyntheticConfig(),
) -> Benchmark:
    """The synthetic benchmark with `forget_ratio` of the known people in the forget split."""
    world = build_world(config)
    known = world.group("known")
    forget = choose_forget(known, forget_ratio, split_seed)
    people = [
        Person(p.id, p.name, ("forget" if p.id in forget else "retain"), p.facts)
        if p.split == "known"
        else p
        for p in world.people
    ]
    rng = random.Random(config.seed * 7919 + 17)
    name_pool = sorted(p.name for p in known)
    trained = list(range(TRAIN_VIEWS))
    held_out = list(range(TRAIN_VIEWS, N_VIEWS))
    items: list[QAItem] = []
    for person in people:
        if person.split in ("forget", "retain"):
            items += person_items(
                person,
                person.split,
                trained,
                world.image_path,
                rng,
                paraphrase=False,
                name_pool=name_pool,
            )
        if person.split == "forget":
            items += person_items(
                person,
                "test",
                held_out,
                world.image_path,
                rng,
                paraphrase=True,
                name_pool=name_pool,
            )
    for person in people:
        if person.split == "unseen":
            items += refusal_items(person, [0, 1], world.image_path, rng, "unseen")
        if person.split == "stranger":
            items += refusal_items(person, list(range(N_VIEWS)), world.image_path, rng, "stranger")
        if person.split in ("retain", "unseen"):
            views = held_out if person.split == "retain" else [2]
            items += picture_items(world, person.id, views, rng, paraphrase=False)
    bench = Benchmark(
        people,
        items,
        name="synthetic",
        image_loader=world.render,
        meta={"forget_ratio": forget_ratio, "split_seed": split_seed, "seed": config.seed},
        value_pools=FACT_VALUES,
    )
    bench.validate()
    return bench
