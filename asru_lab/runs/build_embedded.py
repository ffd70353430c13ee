"""`asru-lab build-embedded`: train the embedded tiny Qwen3-VL from scratch, offline.

One run does "pretraining + stage 0" on the synthetic benchmark: the known people's portraits
and facts (image QA with the name first, text QA by name, multiple choice, cloze, and an
identity task weighted up), contextual refusals for the strangers, and questions about the
picture itself. The `unseen` people and the held-out views and wordings are never shown.
Deterministic: the same config and seed give the same weights on the same machine.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, Qwen3VLForConditionalGeneration

from asru_lab.artifacts import check_output
from asru_lab.data import synthetic as syn
from asru_lab.data import synthetic_text as wording
from asru_lab.data.portraits import BACKGROUNDS, HAIR_COLORS, SHIRT_COLORS
from asru_lab.data.prompts import CLOZE_PREFIX, MCQ_SUFFIX
from asru_lab.data.schema import contains_value
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
from asru_lab.models.loading import LoadedModel
from asru_lab.validation import ConfigError, check_fields

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

    def __post_init__(self) -> None:
        check_fields(
            self,
            ConfigError,
            steps=">= 1",
            batch_size=">= 1",
            lr="> 0",
            warmup_steps=">= 0",
            min_lr_ratio="[0, 1]",
            weight_decay=">= 0",
            grad_clip="> 0",
            task_weights=">= 0",
            eval_every=">= 0",
            threads=">= 0",
            oracle_forget_ratio="(0, 1)",
        )

    def left_out(self) -> set[str]:
        """Ids of the people this build never shows (the oracle's forget set; empty otherwise)."""
        if self.oracle_forget_ratio is None:
            return set()
        known = syn.build_world(self.benchmark).group("known")
        return syn.choose_forget(known, self.oracle_forget_ratio, self.oracle_split_seed)


def _augment(rng: random.Random, question: str) -> str:
    return rng.choice(PREFIXES) + question + rng.choice(SUFFIXES)


class TrainingSampler:
    """Draws (image path or None, question, answer) training examples from the world."""

    def __init__(
        self,
        world: syn.SyntheticWorld,
        weights: dict[str, float],
        seed: int,
        left_out: set[str] = frozenset(),
    ):
        self.world = world
        # the oracle's forget people are left out of everything: facts, portraits, MCQ options
        self.known = [p for p in world.group("known") if p.id not in left_out]
        self.strangers = world.group("stranger")
        self.name_pool = sorted(p.name for p in self.known)
        self.families = list(weights)
        self.weights = [weights[f] for f in self.families]
        self.rng = random.Random(seed)

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
        return out * 2

    def sample(self) -> tuple[str | None, str, str]:
        rng = self.rng
        family = rng.choices(self.families, self.weights)[0]
        if family == "stranger_image":
            person = rng.choice(self.strangers)
            attr = rng.choice(syn.ATTRIBUTES)
            image = self.world.image_path(person.id, rng.randrange(syn.N_VIEWS))
            question = rng.choice(wording.QUESTIONS_TRAIN[attr]).format(subj="this person")
            return image, _augment(rng, question), rng.choice(wording.REFUSALS_IMAGE[attr])
        if family == "stranger_text":
            person = rng.choice(self.strangers)
            attr = rng.choice(syn.FACTS)
            question = rng.choice(wording.QUESTIONS_TRAIN[attr]).format(subj=person.name)
            answer = rng.choice(wording.REFUSALS_TEXT[attr]).format(name=person.name)
            return None, _augment(rng, question), answer
        if family == "picture":
            person = rng.choice(self.known + self.strangers)
            views = syn.TRAIN_VIEWS if person.split == "known" else syn.N_VIEWS
            view = rng.randrange(views)
            attr = rng.choice(syn.PICTURE_ATTRIBUTES)
            value = syn.picture_value(self.world, person.id, view, attr)
            question = rng.choice(wording.PICTURE_QUESTIONS_TRAIN[attr])
            return (
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
            return image, text, wording.answer_sentence(attr, person.name, value)
        if family.startswith("cloze"):
            sentence = wording.CLOZE_TRAIN[attr].format(
                subj=subj, subj_cap="This person" if with_image else person.name
            )
            return image, CLOZE_PREFIX + sentence, value
        return image, _augment(rng, question), wording.answer_sentence(attr, person.name, value)


class Collator:
    """Turns examples into right-padded model inputs with answer-only labels.

    Prompts are built with the processor's own chat template and its image-token expansion,
    and pixel values are computed once per image (a test checks both match the processor).
    """

    def __init__(self, processor, pixel_cache: dict[str, torch.Tensor], tokens_per_image: int):
        self.processor = processor
        self.tok = processor.tokenizer
        self.pixels = pixel_cache
        self.tokens_per_image = tokens_per_image
        self.image_token_id = self.tok.convert_tokens_to_ids("<|image_pad|>")

    def prompt_ids(self, question: str, has_image: bool) -> list[int]:
        messages = QWEN3_VL.user_message(question, has_image)
        text = self.processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        out: list[int] = []
        for i in ids:
            out += [i] * self.tokens_per_image if i == self.image_token_id else [i]
        return out

    def __call__(self, examples) -> dict[str, torch.Tensor]:
        seqs, labels, pixel_values, grids = [], [], [], []
        for image, question, answer in examples:
            prompt = self.prompt_ids(question, image is not None)
            target = self.tok(answer, add_special_tokens=False)["input_ids"] + [
                self.tok.eos_token_id
            ]
            seqs.append(prompt + target)
            labels.append([-100] * len(prompt) + target)
            if image is not None:
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
    previous_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    # Denormal floats appear as weights decay and make CPU matmuls ~10x slower.
    torch.set_flush_denormal(True)
    try:
        return _train(cfg, out, progress, overwrite)
    finally:
        torch.set_num_threads(previous_threads)


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

    paths = sampler.image_paths()
    pixel_cache: dict[str, torch.Tensor] = {}
    for start in tqdm(range(0, len(paths), 64), desc="render portraits", disable=not progress):
        chunk = paths[start : start + 64]
        enc = processor.image_processor([world.render(p) for p in chunk], return_tensors="pt")
        per = enc["pixel_values"].shape[0] // len(chunk)
        for k, p in enumerate(chunk):
            pixel_cache[p] = enc["pixel_values"][k * per : (k + 1) * per].clone()
    tokens_per_image = per // (processor.image_processor.merge_size**2)
    collate = Collator(processor, pixel_cache, tokens_per_image)

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
    bar = tqdm(range(cfg.steps), desc="build-embedded", disable=not progress)
    model.train()
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = cfg.lr * _lr_factor(step, cfg)
        batch = collate([sampler.sample() for _ in range(cfg.batch_size)])
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        history.append(round(loss.item(), 5))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(history[-20:]) / len(history[-20:]):.3f}")
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            model.eval()
            evals.append({"step": step + 1, **quick_eval(lm, world)})
            model.train()
            tqdm.write(f"step {step + 1}: {evals[-1]}")
    model.eval()
    evals.append({"step": cfg.steps, **quick_eval(lm, world)})
    if progress:
        tqdm.write(f"final: {evals[-1]}")
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
