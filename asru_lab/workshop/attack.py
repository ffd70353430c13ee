"""Exercise 4: break the unlearning. Against `steer_only` (the stage 1.1 probe applied at
inference): find what the method adds to the residual stream, project it out of every layer
with hooks, and prefill the answer. Each checker compares the student's attack with the
library's (`asru_lab.auditing.measure`) and then measures whether the forgotten facts come
back."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack, nullcontext

import torch

from asru_lab.auditing import AuditConfig
from asru_lab.auditing.measure import ablated, last_states, leak_records, rate
from asru_lab.data.schema import Benchmark, QAItem, contains_value
from asru_lab.generation import encode_items, fact_prefix
from asru_lab.hooks import reading
from asru_lab.models.loading import LoadedModel
from asru_lab.probe import SteeringProbe
from asru_lab.workshop.common import Feedback, as_vector, cosine_of, example_sets, verdict

# Logits of an attack that matches the library's differ from them by float32 rounding only.
LOGIT_TOLERANCE = 1e-3


def reference_added(
    lm: LoadedModel, bench: Benchmark, probe: SteeringProbe, items: Sequence[QAItem]
) -> dict[int, torch.Tensor]:
    """Per layer, float64 `[hidden]`: what the method adds to the residual stream after that
    layer, at the last prompt token — mean over `items` with the probe applied (as `steer_only`
    answers) minus the mean without it (the model before unlearning)."""
    means = []
    for applied in (True, False):
        with probe.apply(lm) if applied else nullcontext():
            states = last_states(lm, bench, items, batch_size=32)
        means.append(states.double().mean(0))
    diff = means[0] - means[1]
    return {layer: diff[layer] for layer in range(lm.num_layers)}


def check_added(
    added,
    lm: LoadedModel,
    bench: Benchmark,
    probe: SteeringProbe,
    *,
    sets: dict[str, list[QAItem]] | None = None,
    strict: bool = False,
) -> Feedback:
    """Is `added` ({layer: `[hidden]`}, every layer) what the probe adds on `sets["forget"]`
    (`reference_added`)? Layers where nothing is added must be (near) zero; the others need a
    cosine of at least 0.999 and a length within 1 %."""
    n = lm.num_layers
    if added is None:
        return verdict(
            False,
            "`added` is still None: a dict {layer: tensor} for layers 0.."
            f"{n - 1}. Read sets['forget'] with `last_states` once inside "
            "`with unlearned.applied():` and once outside, then take the difference of the "
            "means",
            strict,
        )
    if not isinstance(added, dict):
        return verdict(False, f"`added` should be a dict, got a {type(added).__name__}", strict)
    missing = [layer for layer in range(n) if layer not in added]
    if missing:
        return verdict(False, f"layers {missing} are missing: measure every layer", strict)
    got = {}
    for layer in range(n):
        got[layer], problem = as_vector(added[layer], lm.hidden_size, f"added[{layer}]")
        if problem:
            return verdict(False, problem, strict)
    sets = sets or example_sets(bench)
    expected = reference_added(lm, bench, probe, sets["forget"])
    scale = max(float(v.norm()) for v in expected.values())
    if scale == 0:
        return verdict(
            False,
            "the probe changes nothing on these forget prompts (its gate never fires): there is "
            "nothing to find; use the unlearned model's probe",
            strict,
        )
    if all(float(v.norm()) < 1e-6 * scale for v in got.values()):
        return verdict(
            False,
            "every difference is zero: the method's hooks did not run while you read. Read "
            "once inside `with unlearned.applied():` and once outside, with `last_states` "
            "(`capture` runs the model through nnsight, which does not call PyTorch hooks)",
            strict,
        )
    pushed = [k for k in range(n) if float(expected[k].norm()) >= 1e-6 * scale]
    if all(cosine_of(got[k], expected[k]) < -0.999 for k in pushed):
        return verdict(
            False,
            "your differences point the opposite way: what unlearning *added* is "
            "mean(with the method) - mean(without it)",
            strict,
        )
    for k in range(n):
        if k not in pushed and float(got[k].norm()) > 1e-4 * scale:
            return verdict(
                False,
                f"at layer {k} the method adds nothing (it acts at layer {probe.layer} and "
                f"above), but your difference has length {float(got[k].norm()):.3g}. Read both "
                "sides at the last prompt token of the same questions, sets['forget']",
                strict,
            )
    for k in pushed:
        cosine = cosine_of(got[k], expected[k])
        ratio = float(got[k].norm() / expected[k].norm())
        if cosine > 0.999 and abs(ratio - 1) >= 0.01:
            return verdict(
                False,
                f"at layer {k} the direction is right but the length is x{ratio:.2f}: keep the "
                "raw difference of the two means (not normalised, not summed)",
                strict,
            )
        if cosine <= 0.999:
            return verdict(
                False,
                f"at layer {k} the cosine with the library's difference is only {cosine:.3f}. "
                "Read the residual stream after every layer at the last prompt token "
                "(`last_states`) of sets['forget'], with the method minus without it",
                strict,
            )
    top = pushed[0]
    along = cosine_of(expected[top], probe.direction)
    share = float(expected[top].norm()) / (probe.alpha * float(probe.direction.norm()))
    return verdict(
        True,
        f"below layer {top} the method adds nothing; at layer {top} it adds a vector of length "
        f"{float(expected[top].norm()):.1f} whose cosine with the probe's direction is "
        f"{along:.3f}: alpha·v where the gate fired (on {share:.0%} of these prompts), averaged",
        strict,
    )


def _logits(lm: LoadedModel, bench: Benchmark, items: Sequence[QAItem]) -> torch.Tensor:
    """float32 `[n, vocab]`: next-token logits at the last prompt token of each item."""
    with torch.no_grad():
        inputs = encode_items(lm, bench, items)
        return lm.model(**inputs, logits_to_keep=1).logits[:, -1].float().cpu()


def _hook_ids(lm: LoadedModel) -> list[set[int]]:
    """Per decoder layer, the ids of its forward hooks and pre-hooks."""
    layers = lm.adapter.decoder_layers(lm.model)
    return [{*m._forward_hooks, *m._forward_pre_hooks} for m in layers]


def _remove_hooks_since(lm: LoadedModel, before: list[set[int]]) -> bool:
    """Remove the hooks added to the decoder layers since `before`; True if there were any
    (a student's attack that did not clean up after itself)."""
    found = False
    for module, known in zip(lm.adapter.decoder_layers(lm.model), before, strict=True):
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            for key in [k for k in hooks if k not in known]:
                del hooks[key]
                found = True
    return found


def _leaks(
    lm: LoadedModel, bench: Benchmark, items: Sequence[QAItem], max_new_tokens: int = 24, **kwargs
) -> tuple[list[dict], float]:
    """Greedy answers to `items` as `leak_records`, and the share that say the fact."""
    config = AuditConfig(progress=False, max_new_tokens=max_new_tokens)
    records = leak_records(lm, bench, items, config, attack="workshop", **kwargs)
    return records, rate(records) or 0.0


def _attacked_logits(
    ablate: Callable,
    lm: LoadedModel,
    bench: Benchmark,
    probe: SteeringProbe,
    directions: dict[int, torch.Tensor],
    prompts: Sequence[QAItem],
) -> tuple[dict[str, torch.Tensor], dict[int, dict]]:
    """With the probe applied: the logits without an attack ("plain"), under the library's
    ablation ("expected"), under the student's ("got") and after it ("after"); and the residual
    stream after each ablated layer as the student's hooks leave it."""
    logits = {}
    layers = lm.adapter.decoder_layers(lm.model)
    with probe.apply(lm):
        logits["plain"] = _logits(lm, bench, prompts)
        with ablated(lm, directions):
            logits["expected"] = _logits(lm, bench, prompts)
        # hooks run in the order they were added: these read what the student's hooks return
        with ablate(lm, directions), ExitStack() as stack:
            boxes = {
                k: stack.enter_context(reading(layers[k], "output"))
                for k, d in directions.items()
                if float(d.norm()) > 0
            }
            logits["got"] = _logits(lm, bench, prompts)
        logits["after"] = _logits(lm, bench, prompts)
    return logits, boxes


def check_ablation(
    ablate: Callable | None,
    lm: LoadedModel,
    bench: Benchmark,
    probe: SteeringProbe,
    *,
    sets: dict[str, list[QAItem]] | None = None,
    n_examples: int = 8,
    min_leak: float = 0.5,
    strict: bool = False,
) -> Feedback:
    """Does `ablate(model, directions)` (a context manager) project each layer's direction out
    of the residual stream after that layer, as `asru_lab.auditing.measure.ablated` does, and
    does that bring the forgotten facts back?

    The directions are what the probe adds (`reference_added` on `sets["forget"]`). With the
    probe applied, the attack's next-token logits on held-out prompts must match the library's
    within `LOGIT_TOLERANCE`, and its hooks must be gone after the block (hooks it leaves
    behind are removed, and reported). Then greedy answers to `n_examples` held-out forget
    questions must leak the fact at least `min_leak` of the time (and more often than without
    the attack); retain recall is reported alongside.
    """
    if ablate is None:
        return verdict(
            False,
            "`ablate` is still None: write a context manager `ablate(model, directions)` that "
            "registers a forward hook on each decoder layer returning h - (h·u) u, yields, "
            "and removes the hooks",
            strict,
        )
    sets = sets or example_sets(bench)
    directions = reference_added(lm, bench, probe, sets["forget"])
    forget = sets["forget_held_out"][:n_examples]
    retain = sets["retain_held_out"][:n_examples]
    before = _hook_ids(lm)
    try:
        logits, boxes = _attacked_logits(
            ablate, lm, bench, probe, directions, [*forget[:4], *retain[:4]]
        )
    except Exception as exc:  # the student's code: report, never crash the notebook
        _remove_hooks_since(lm, before)
        return verdict(False, _raised(exc), strict)
    if _remove_hooks_since(lm, before):
        return verdict(
            False,
            "your hooks stayed on the model after the block (the checker removed them): remove "
            "each one when the block ends, `handle.remove()` in a `finally:` after the `yield`",
            strict,
        )
    plain, got = logits["plain"], logits["got"]
    if not torch.allclose(logits["after"], plain, atol=LOGIT_TOLERANCE):
        return verdict(
            False, "the model answers differently after the block: undo everything you did", strict
        )
    if not torch.isfinite(got).all():
        return verdict(
            False,
            "the logits are NaN: a direction of length 0 (the layers where unlearning added "
            "nothing) gives 0/0 when you normalise it. Skip those layers",
            strict,
        )
    if torch.allclose(got, plain, atol=LOGIT_TOLERANCE):
        return verdict(
            False,
            "your hooks changed nothing. A forward hook replaces a layer's output only when it "
            "returns the new tensor: `return output - ...`",
            strict,
        )
    gap = float((got - logits["expected"]).abs().max())
    if gap > LOGIT_TOLERANCE:
        return verdict(False, _what_differs(boxes, directions, gap), strict)
    with probe.apply(lm):
        _, leak_before = _leaks(lm, bench, forget)
        _, recall_before = _leaks(lm, bench, retain)
        with ablate(lm, directions):
            attacked, leak_after = _leaks(lm, bench, forget)
            _, recall_after = _leaks(lm, bench, retain)
    example = next((r for r in attacked if r["leak"]), attacked[0])
    numbers = (
        f"forget leak {leak_before:.0%} -> {leak_after:.0%} "
        f'(e.g. "{example["question"]}" -> "{example["answer"]}"); retain recall '
        f"{recall_before:.0%} -> {recall_after:.0%}"
    )
    if leak_after >= min_leak and leak_after > leak_before:
        return verdict(
            True, f"your ablation matches the library's and breaks it: {numbers}", strict
        )
    return verdict(
        False,
        f"your ablation matches the library's, but the facts did not come back: {numbers}. "
        "Is `probe` the unlearned model's probe (`unlearned.probe`)?",
        strict,
    )


def _raised(exc: Exception) -> str:
    if isinstance(exc, (TypeError, AttributeError)) and "context manager" in str(exc):
        return (
            "`ablate(model, directions)` should be a context manager: decorate it with "
            f"`@contextmanager` and `yield` while the hooks are on ({exc})"
        )
    return f"ablate raised {type(exc).__name__}: {exc}"


def _what_differs(boxes: dict, directions: dict[int, torch.Tensor], gap: float) -> str:
    """Why the student's logits differ from the library's: a direction left in the residual
    stream, or something else changed."""
    for layer, box in boxes.items():
        if "value" not in box:
            continue
        unit = directions[layer] / directions[layer].norm()
        hidden = box["value"].double()
        left = float((hidden @ unit.to(hidden.device)).abs().max())
        if left > 1e-3 * float(hidden.norm(dim=-1).max()):
            return (
                f"after your hook, the residual stream after layer {layer} still has a "
                f"component along the direction (|h·u| up to {left:.2f}). Project it out at every "
                "position of every forward pass: h - (h·u) u with u = d / |d|"
            )
    return (
        f"the direction is gone, but the logits differ from the library's by up to {gap:.3g}: "
        "remove only the component along u (h - (h·u) u), and leave everything else as it is"
    )


def check_prefill(
    prefix_of: Callable[[QAItem], str] | None,
    lm: LoadedModel,
    bench: Benchmark,
    probe: SteeringProbe,
    *,
    sets: dict[str, list[QAItem]] | None = None,
    n_examples: int = 8,
    min_leak: float = 0.5,
    strict: bool = False,
) -> Feedback:
    """Does `prefix_of(item)` return the words of the item's reference answer before the fact
    (`asru_lab.generation.fact_prefix`: "Alma Aldous was born in" for "... born in Lisbon."),
    and does starting the model's answer with them (probe applied) make it say the fact?

    Checked on the first `n_examples` held-out forget questions whose reference answer has
    words before the fact; the prefilled answers must leak at least `min_leak` of the time.
    """
    if prefix_of is None:
        return verdict(
            False,
            "`prefix_of` is still None: a function of an item returning the words of "
            "`item.answer` before `item.value`",
            strict,
        )
    sets = sets or example_sets(bench)
    items = [i for i in sets["forget_held_out"] if fact_prefix(i.answer, i.value)[0]]
    items = items[:n_examples]
    prefixes = []
    for item in items:
        want = fact_prefix(item.answer, item.value)[0]
        try:
            got = prefix_of(item)
        except Exception as exc:  # the student's code: report, never crash the notebook
            return verdict(False, f"prefix_of raised {type(exc).__name__}: {exc}", strict)
        if got is None:
            return verdict(False, "prefix_of returns None: return the prefix (a str)", strict)
        if not isinstance(got, str):
            return verdict(
                False, f"prefix_of should return a str, got a {type(got).__name__}", strict
            )
        if contains_value(got, item.value):
            return verdict(
                False,
                f'your prefix already says the fact ("{got}"): stop before it, so that the model '
                "has to say it itself",
                strict,
            )
        if got != want and got.rstrip() == want:
            return verdict(
                False,
                f'drop the trailing space of "{got}": the fact\'s first token carries its own '
                'space (" Lisbon"), and after a space the model is somewhere it never was',
                strict,
            )
        if got != want:
            return verdict(
                False,
                f'for "{item.answer}" expected "{want}", got "{got}": the reference answer\'s '
                "words up to the fact (`item.answer`, `item.value`; any capitalisation)",
                strict,
            )
        prefixes.append(got)
    with probe.apply(lm):
        _, plain = _leaks(lm, bench, items)
        records, leak = _leaks(lm, bench, items, prefixes=prefixes)
    example = next((r for r in records if r["leak"]), records[0])
    numbers = (
        f'forget leak {plain:.0%} -> {leak:.0%} (e.g. "{example["prefix"]}" -> '
        f'"{example["answer"]}")'
    )
    if leak >= min_leak and leak > plain:
        return verdict(True, f"the prefilled answers give the facts away: {numbers}", strict)
    return verdict(
        False,
        f"your prefixes are right, but the facts did not come back: {numbers}. Is `probe` "
        "the unlearned model's probe (`unlearned.probe`)?",
        strict,
    )
