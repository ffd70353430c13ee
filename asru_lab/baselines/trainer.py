"""The shared trainer of the gradient baselines (GA, GradDiff, KL-Min, NPO, refusal SFT,
MMUnlearner).

Each baseline is a loss over one `Step`: a batch of forget questions (and, for the methods
that use one, a batch of retain questions) with answer-only labels. The trainer does the rest
once for all of them: LoRA on every linear layer of the language model (the vision tower
stays frozen) or, for a method that passes weight masks, full training of just the masked
weights; AdamW with linear decay, gradient clipping, seeded shuffling and progress.
The reference model (NPO, KL-Min) is the same network with the adapter switched off, so no
second copy of the weights is held.

Defaults are the public baseline code's: lr 2e-5 (NPO: beta 0.4, lr 1e-5), LoRA r 16,
5 epochs of batch 8. They are kept on the embedded model too, so that the comparison is the
paper's; a larger learning rate is one field away (`UnlearnConfig(lr=1e-4)`).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F

from asru_lab.baselines.registry import UnlearnError
from asru_lab.data.schema import Benchmark, QAItem
from asru_lab.generation import encode_items
from asru_lab.models.loading import LoadedModel
from asru_lab.training import (
    IGNORE_INDEX,
    Example,
    answer_labels,
    answer_tokens,
    answer_window,
    language_model_linears,
    lora_wrap,
    seeded,
    train,
)
from asru_lab.validation import check_fields, nonfinite_trained

# Stock "I don't know" answers for refusal SFT (the TOFU-style IDK baseline): one canned
# refusal whatever was asked, which is what the paper calls a rigid refusal.
IDK_ANSWERS = (
    "I don't know.",
    "I'm not sure.",
    "I have no idea.",
    "I can't answer that.",
    "Sorry, I don't know that.",
)


@dataclass
class UnlearnConfig:
    """How a gradient baseline trains (defaults: the public baseline code's)."""

    lr: float = field(
        default=2e-5, metadata={"help": "peak AdamW learning rate, decayed linearly to 0"}
    )
    epochs: int = field(default=5, metadata={"help": "passes over the forget examples"})
    batch_size: int = field(
        default=8, metadata={"help": "forget examples per step (and as many retain examples)"}
    )
    lora_r: int = field(
        default=16,
        metadata={"help": "LoRA rank on the language model's linears; 0: train them in full"},
    )
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA branch input"})
    retain_weight: float = field(
        default=1.0, metadata={"help": "weight of the retain term (methods that have one)"}
    )
    npo_beta: float = field(default=0.4, metadata={"help": "NPO's inverse temperature"})
    tasks: tuple[str, ...] = field(
        default=("qa",), metadata={"help": "forget/retain tasks trained on (open questions)"}
    )
    max_forget: int | None = field(
        default=None, metadata={"help": "cap on forget examples (seeded sample); None: all"}
    )
    max_retain: int | None = field(
        default=None, metadata={"help": "cap on retain examples; None: as many as forget"}
    )
    idk_answers: tuple[str, ...] = field(
        default=IDK_ANSWERS, metadata={"help": "refusal SFT targets"}
    )
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "clipping norm over the trainable parameters"}
    )
    seed: int = field(default=0, metadata={"help": "LoRA init, dropout, sampling and shuffling"})
    progress: bool = field(default=True, metadata={"help": "tqdm bar with the running loss"})

    def __post_init__(self) -> None:
        check_fields(
            self,
            UnlearnError,
            lr="> 0",
            epochs=">= 1",
            batch_size=">= 1",
            lora_r=">= 0",
            lora_alpha="> 0",
            lora_dropout="[0, 1)",
            retain_weight=">= 0",
            npo_beta="> 0",
            max_forget=">= 1",
            max_retain=">= 1",
            max_grad_norm="> 0",
        )


@dataclass
class Step:
    """One training step's batches; the losses read what they need from it.

    `batches[split]` holds processor outputs plus `labels` (answer tokens, -100 elsewhere)
    for "forget" and, when the method uses it, "retain".
    """

    model: torch.nn.Module
    batches: dict[str, dict[str, torch.Tensor]]
    reference: Callable[..., torch.Tensor] | None = None  # inputs -> the frozen model's logits
    layers: Sequence[torch.nn.Module] = ()  # the decoder layers, first to last
    mlps: Sequence[torch.nn.Module] = ()  # their MLPs
    lens: Callable[[torch.Tensor], torch.Tensor] | None = None  # residual -> logits
    _cache: dict = field(default_factory=dict)

    def forget_cache(self) -> None:
        """Drop what was computed with the trainable weights (after they moved in place);
        the frozen reference's outputs stay."""
        for key in [k for k in self._cache if k[1] is not True]:
            del self._cache[key]

    def representations(self, split: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """At `split`'s answer tokens (`[n_tokens, hidden]` each): every MLP's output and every
        decoder layer's output (the residual stream), from the forward pass that also gives
        the split's logits."""
        key = ("representations", split)
        if key not in self._cache:
            if not self.mlps or len(self.mlps) != len(self.layers):
                raise UnlearnError("this step was built without the model's layers and MLPs")
            batch = dict(self.batches[split])
            labels = batch.pop("labels")
            seen: dict[str, list[torch.Tensor]] = {"mlp": [], "layer": []}

            def keeper(kind):
                def hook(_module, _inputs, out):
                    seen[kind].append(out[0] if isinstance(out, tuple) else out)

                return hook

            handles = [m.register_forward_hook(keeper("mlp")) for m in self.mlps]
            handles += [m.register_forward_hook(keeper("layer")) for m in self.layers]
            try:
                logits = self.model(**batch).logits
            finally:
                for handle in handles:
                    handle.remove()
            # position t predicts token t+1: the states that predict the answer tokens
            targets = labels[:, 1:] != IGNORE_INDEX
            mlp, layer = ([o[:, :-1][targets] for o in seen[k]] for k in ("mlp", "layer"))
            self._cache[(split, False)] = (logits[:, :-1].float(), labels[:, 1:])
            self._cache[key] = (mlp, layer)
        return self._cache[key]

    def lens_nll(self, split: str) -> torch.Tensor:
        """Mean over decoder layers of the answer tokens' negative log-likelihood read through
        the logit lens (final norm and LM head on each layer's residual)."""
        if self.lens is None:
            raise UnlearnError("this step was built without a logit lens")
        _, hidden = self.representations(split)
        labels = self.batches[split]["labels"][:, 1:]
        answer = labels[labels != IGNORE_INDEX]
        return torch.stack([F.cross_entropy(self.lens(h).float(), answer) for h in hidden]).mean()

    def _logits(self, split: str, reference: bool) -> tuple[torch.Tensor, torch.Tensor]:
        key = (split, reference)
        if key not in self._cache:
            batch = dict(self.batches[split])
            labels = batch.pop("labels")
            # answers end each left-padded row: logits only where the loss reads them
            length = labels.shape[1]
            batch["logits_to_keep"] = keep = answer_window(labels)
            if reference:
                with torch.no_grad():
                    logits = self.reference(**batch)
            else:
                logits = self.model(**batch).logits
            # position t predicts token t+1
            self._cache[key] = (logits[:, :-1].float(), labels[:, length - keep + 1 :])
        return self._cache[key]

    def nll(self, split: str) -> torch.Tensor:
        """Mean negative log-likelihood per answer token of `split`'s batch."""
        logits, labels = self._logits(split, False)
        return F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX)

    def sequence_logprob(self, split: str, reference: bool = False) -> torch.Tensor:
        """Per example, the summed log-probability of its answer tokens (nats)."""
        logits, labels = self._logits(split, reference)
        mask = labels != IGNORE_INDEX
        picked = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None])
        return (picked[..., 0] * mask).sum(-1)

    def kl_to_reference(self, split: str) -> torch.Tensor:
        """Mean KL(reference || model) of the next-token distributions on the answer tokens."""
        logits, labels = self._logits(split, False)
        ref, _ = self._logits(split, True)
        mask = labels != IGNORE_INDEX
        kl = F.kl_div(
            torch.log_softmax(logits, -1),
            torch.log_softmax(ref, -1),
            log_target=True,
            reduction="none",
        ).sum(-1)
        return (kl * mask).sum() / mask.sum()


Loss = Callable[[Step, UnlearnConfig], torch.Tensor]


def _items(bench: Benchmark, split: str, tasks: tuple[str, ...]) -> list[QAItem]:
    return [i for i in bench.split(split) if i.task in tasks]


def training_sets(
    bench: Benchmark, config: UnlearnConfig, *, uses_retain: bool, forget_answers: str
) -> dict[str, list[Example]]:
    """The forget examples (answers: the truth, or IDK refusals) and the retain examples."""
    forget = _items(bench, "forget", config.tasks)
    if not forget:
        raise UnlearnError(
            f"nothing to unlearn: {bench.name} has no forget items with tasks "
            f"{list(config.tasks)}; check the benchmark's forget split and UnlearnConfig.tasks"
        )
    rng = random.Random(config.seed)
    if config.max_forget is not None and len(forget) > config.max_forget:
        forget = rng.sample(forget, config.max_forget)
    if forget_answers == "idk":
        if not config.idk_answers:
            raise UnlearnError("refusal SFT needs at least one answer in UnlearnConfig.idk_answers")
        examples = [Example(i.image, i.question, rng.choice(config.idk_answers)) for i in forget]
    else:
        examples = [Example(i.image, i.question, i.answer) for i in forget]
    sets = {"forget": examples}
    if uses_retain:
        retain = _items(bench, "retain", config.tasks)
        if not retain:
            raise UnlearnError(
                f"this method needs retain examples, but {bench.name} has no retain items with "
                f"tasks {list(config.tasks)}"
            )
        n = config.max_retain if config.max_retain is not None else len(examples)
        retain = rng.sample(retain, min(n, len(retain)))
        sets["retain"] = [Example(i.image, i.question, i.answer) for i in retain]
    return sets


def train_unlearning(
    lm: LoadedModel,
    bench: Benchmark,
    config: UnlearnConfig,
    loss: Loss,
    *,
    name: str,
    uses_retain: bool,
    forget_answers: str = "truth",
    masks: Mapping[str, torch.Tensor] | None = None,
) -> tuple[LoadedModel, dict]:
    """Train a copy of `lm` with `loss` on the forget (and retain) set; returns the merged
    model (eval mode) and a record: config, per-step losses, examples, seconds.

    `masks` (parameter name -> boolean tensor of its shape): train exactly the weights marked
    True, in full (no LoRA, `config.lora_r` is not read); every other weight stays as it was.
    """
    config = replace(config)  # runs __post_init__ again: fields set after construction too
    started = time.time()
    sets = training_sets(bench, config, uses_retain=uses_retain, forget_answers=forget_answers)
    tails = {split: answer_tokens(lm, examples)[0] for split, examples in sets.items()}
    out = lm.clone()
    # read before the LoRA wrap, which replaces only the linears inside these modules
    base = out.model
    layers = list(lm.adapter.decoder_layers(base))
    mlps = [lm.adapter.mlp(base, k) for k in range(len(layers))]

    def lens(hidden: torch.Tensor) -> torch.Tensor:
        return lm.adapter.logits_from_hidden(base, hidden)

    steps_per_epoch = math.ceil(len(sets["forget"]) / config.batch_size)
    total = steps_per_epoch * config.epochs

    def step_loss(orders: list[list[int]], step: int) -> torch.Tensor:
        order = dict(zip(sets, orders, strict=True))
        start = step * config.batch_size
        chunk = order["forget"][start : start + config.batch_size]
        batches = {"forget": _batch(out, bench, sets["forget"], tails["forget"], chunk)}
        if "retain" in sets:  # as many retain examples, cycling through them
            retain = order["retain"]
            picked = [retain[(start + k) % len(retain)] for k in range(len(chunk))]
            batches["retain"] = _batch(out, bench, sets["retain"], tails["retain"], picked)
        return loss(Step(out.model, batches, reference, layers, mlps, lens), config)

    def nonfinite(value: float, epoch: int, step: int) -> UnlearnError:
        return UnlearnError(
            f"{name}: the loss became {value} at epoch {epoch + 1}, step {step + 1}; "
            f"lower {type(config).__name__}.lr (now {config.lr:g})"
        )

    with seeded(config.seed, out.device):  # LoRA init, dropout
        model, reference, grad_masks = _trainable(lm, out, config, masks)
        out.model = model
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if grad_masks is not None:
            trainable = sum(int(mask.count_nonzero()) for mask in grad_masks.values())
        losses = train(
            model,
            step_loss,
            shuffled=[len(examples) for examples in sets.values()],
            steps_per_epoch=steps_per_epoch,
            epochs=config.epochs,
            lr=config.lr,
            max_grad_norm=config.max_grad_norm,
            seed=config.seed,
            nonfinite=nonfinite,
            desc=name,
            progress=config.progress,
            grad_masks=grad_masks,
        )
    bad = nonfinite_trained(model)
    if bad:
        raise UnlearnError(
            f"{name}: training left NaN or infinite weights in {bad}; nothing was returned or "
            f"saved: lower {type(config).__name__}.lr (now {config.lr:g})"
        )
    if masks is None and config.lora_r > 0:
        out.model = model.merge_and_unload()
    for p in out.model.parameters():
        p.requires_grad = False
    out.model.eval()
    out.name = f"{lm.name}+{name}"
    record = {
        "method": name,
        "config": asdict(config),
        "base_model": lm.name,
        "benchmark": bench.name,
        "benchmark_fingerprint": bench.fingerprint(),
        "examples": {split: len(ex) for split, ex in sets.items()},
        "steps": total,
        "trainable_parameters": trainable,
        "losses": losses,
        "seconds": round(time.time() - started, 2),
    }
    out.info = {**lm.info, "unlearn": {"method": name, "base_model": lm.name}}
    return out, record


def _trainable(
    lm: LoadedModel,
    out: LoadedModel,
    config: UnlearnConfig,
    masks: Mapping[str, torch.Tensor] | None,
) -> tuple[torch.nn.Module, Callable[..., torch.Tensor], dict | None]:
    """The model to train — `out`'s wrapped in LoRA, with only the language model's linears
    trainable (`lora_r=0`), or with only the parameters `masks` marks — the frozen reference
    (inputs -> logits) for NPO and KL-Min (the adapter switched off, or the untouched `lm`),
    and the gradient masks (trained parameter -> 0/1 tensor; None without `masks`)."""
    if masks is None and config.lora_r > 0:
        model = lora_wrap(
            out.model,
            language_model_linears(out),
            r=config.lora_r,
            alpha=config.lora_alpha,
            dropout=config.lora_dropout,
        )

        def reference(**inputs) -> torch.Tensor:
            with model.disable_adapter():
                return model(**inputs).logits

        return model, reference, None
    frozen = lm.model  # never trained: the copy `out` is

    def frozen_logits(**inputs) -> torch.Tensor:
        return frozen(**inputs).logits

    model = out.model
    params = dict(model.named_parameters())
    if masks is None:
        targets = set(language_model_linears(out))
        trained = {pname for pname in params if pname.rsplit(".", 1)[0] in targets}
    else:
        unknown = sorted(set(masks) - set(params))
        if unknown:
            raise UnlearnError(f"masks name parameters the model does not have: {unknown[:5]}")
        trained = {pname for pname, mask in masks.items() if mask.any()}
    for pname, p in params.items():
        p.requires_grad = pname in trained
    if masks is None:
        return model, frozen_logits, None
    grad_masks = {params[pname]: masks[pname].to(params[pname]) for pname in sorted(trained)}
    return model, frozen_logits, grad_masks


def _batch(lm, bench, examples, tails, chunk) -> dict[str, torch.Tensor]:
    picked = [examples[k] for k in chunk]
    batch = encode_items(lm, bench, picked, [e.answer for e in picked])
    batch["labels"] = answer_labels(batch, [tails[k] for k in chunk])
    return batch
