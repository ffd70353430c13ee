"""MMUnlearner: its saliency masks keep the asked share of each side (vision tower + projector,
language model), training moves only the masked weights, runs repeat under a seed, the masks
are saved with the model and read back, and a bad fraction gets a clear error."""

from __future__ import annotations

import json

import pytest
import torch

import asru_lab as al
from asru_lab.baselines import (
    METHODS,
    UnlearnError,
    load_unlearned_tensors,
    save_unlearned,
    unlearn,
)
from asru_lab.baselines.mmunlearner import MMUnlearnerConfig, model_sides, saliency_masks
from asru_lab.cli import main

TINY = {"max_forget": 8, "max_retain": 8, "epochs": 1, "batch_size": 4, "progress": False}
FRACTIONS = {"vision_fraction": 0.2, "language_fraction": 0.05}  # unequal: each side its own


def tiny(**changes) -> MMUnlearnerConfig:
    return MMUnlearnerConfig(**{**TINY, **FRACTIONS, **changes})


def weights(lm: al.LoadedModel) -> dict[str, torch.Tensor]:
    """Each parameter once (the tied LM head is the embedding's parameter)."""
    return {name: p.detach().clone() for name, p in lm.model.named_parameters()}


@pytest.fixture(scope="module")
def run(lm, bench):
    before = weights(lm)
    flags = [p.requires_grad for p in lm.model.parameters()]
    result = unlearn(lm, bench, "mmunlearner", tiny())
    assert [p.requires_grad for p in lm.model.parameters()] == flags  # the input's, restored
    return before, result


def test_masks_keep_the_asked_share_of_each_side(lm, run):
    _, result = run
    sides = model_sides(lm)
    stats = result.record["saliency"]["sides"]
    for side, fraction in (("vision", 0.2), ("language", 0.05)):
        total = sum(p.numel() for name, p in lm.model.named_parameters() if sides[name] == side)
        kept = sum(int(m.sum()) for name, m in result.tensors.items() if sides[name] == side)
        assert kept == round(fraction * total) == stats[side]["kept"]
        assert stats[side]["total"] == total
        assert stats[side]["share"] == pytest.approx(fraction, abs=1 / total)
        assert set(stats[side]["parameters"]) == {
            name for name, m in result.tensors.items() if sides[name] == side
        }
    assert all(m.dtype == torch.bool and m.any() for m in result.tensors.values())


def test_training_moves_only_the_masked_weights(lm, run):
    before, result = run
    assert all(torch.equal(p, before[name]) for name, p in weights(lm).items())  # input kept
    after = weights(result.model)
    changed = 0
    for name, weight in after.items():
        moved = weight != before[name]
        mask = result.tensors.get(name, torch.zeros_like(moved))
        assert not (moved & ~mask).any(), f"{name}: a weight outside the mask changed"
        changed += int(moved.sum())
    assert changed > 0.5 * sum(int(m.sum()) for m in result.tensors.values())
    sides = model_sides(lm)
    assert {sides[name] for name, w in after.items() if not torch.equal(w, before[name])} == {
        "vision",
        "language",
    }  # both sides trained


def test_the_vision_side_is_the_vision_tower_and_its_projector(lm, run):
    _, result = run
    sides = model_sides(lm)
    tower = {f"model.visual.{name}" for name, _ in lm.model.model.visual.named_parameters()}
    language = {
        f"model.language_model.{name}"
        for name, _ in lm.model.model.language_model.named_parameters()
    }
    assert {name for name, side in sides.items() if side == "vision"} == tower
    assert {name for name, side in sides.items() if side == "language"} == language
    path = lm.adapter.visual_projector_path
    projector = lm.model.get_submodule(path)
    assert all(sides[f"{path}.{name}"] == "vision" for name, _ in projector.named_parameters())
    vision_masks = [name for name in result.tensors if sides[name] == "vision"]
    assert vision_masks and all(name in tower for name in vision_masks)


def test_same_seed_gives_the_same_masks_and_weights(lm, bench, run):
    _, first = run
    again = unlearn(lm, bench, "mmunlearner", tiny())
    assert first.tensors.keys() == again.tensors.keys()
    assert all(torch.equal(m, again.tensors[name]) for name, m in first.tensors.items())
    assert first.record["losses"] == again.record["losses"]
    again_weights = weights(again.model)
    assert all(torch.equal(w, again_weights[name]) for name, w in weights(first.model).items())
    other = unlearn(lm, bench, "mmunlearner", tiny(seed=1))  # other examples, other masks
    assert any(not torch.equal(m, other.tensors.get(name, ~m)) for name, m in first.tensors.items())


@pytest.mark.parametrize("field", ["vision_fraction", "language_fraction"])
@pytest.mark.parametrize("value", [0, -0.1, 1.5])
def test_a_fraction_outside_0_1_is_refused(lm, bench, field, value):
    message = rf"MMUnlearnerConfig\.{field} must be in \(0, 1\], got {value}"
    with pytest.raises(UnlearnError, match=message):
        MMUnlearnerConfig(**{field: value})
    config = MMUnlearnerConfig()
    setattr(config, field, value)  # set after construction: caught when the method runs
    with pytest.raises(UnlearnError, match=message):
        unlearn(lm, bench, "mmunlearner", config)


def test_fraction_one_trains_a_whole_side(lm, bench):
    result = unlearn(lm, bench, "mmunlearner", tiny(vision_fraction=1.0))
    assert result.record["saliency"]["sides"]["vision"]["share"] == 1.0
    assert result.record["saliency"]["sides"]["language"]["share"] == pytest.approx(0.05, 1e-3)


def test_the_papers_threshold_keeps_the_weights_with_ratio_at_least_gamma():
    paper = METHODS["mmunlearner"].paper_config()
    assert (paper.vision_fraction, paper.language_fraction, paper.min_ratio) == (1.0, 1.0, 1.0)
    assert (paper.lr, paper.epochs, paper.batch_size) == (1e-5, 1, 4)
    scores = {"v": torch.tensor([[3.0, 0.5], [1.0, 1.0]]), "l": torch.tensor([2.0, 0.1, 9.0])}
    sides = {"v": "vision", "l": "language"}
    masks = saliency_masks(scores, sides, {"vision": 1.0, "language": 1.0}, min_ratio=1.0)
    assert masks["v"].tolist() == [[True, False], [True, True]]
    assert masks["l"].tolist() == [True, False, True]
    top = saliency_masks(scores, sides, {"vision": 0.5, "language": 0.34})
    assert top["v"].tolist() == [[True, False], [True, False]]  # a tie goes to the first weight
    assert top["l"].tolist() == [False, False, True]


def test_masks_are_saved_with_the_model_and_read_back_equal(run, tmp_path):
    _, result = run
    out = save_unlearned(result, tmp_path / "mm")
    loaded = load_unlearned_tensors(out)
    assert loaded.keys() == result.tensors.keys()
    assert all(torch.equal(loaded[name], m) for name, m in result.tensors.items())
    record = json.loads((out / "unlearn.json").read_text())
    assert record["saliency"]["sides"]["vision"]["kept"] == sum(
        int(m.sum()) for name, m in result.tensors.items() if name.startswith("model.visual.")
    )
    model = al.load_model(out)
    assert all(torch.equal(w, weights(result.model)[n]) for n, w in weights(model).items())
    with pytest.raises(UnlearnError, match="holds no unlearn.safetensors"):
        load_unlearned_tensors(tmp_path)


def test_cli_shows_and_applies_the_mask_fractions(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["unlearn", "--method", "mmunlearner", "--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    assert "MMUnlearnerConfig" in shown and "mmunlearner" in shown
    for flag in ("--vision-fraction", "--language-fraction", "--min-ratio"):
        assert flag in shown
    out = tmp_path / "mm"
    code = main(["unlearn", "--method", "mmunlearner", "--out", str(out), "--epochs", "1",
                 "--max-forget", "4", "--vision-fraction", "0.5", "--quiet"])  # fmt: skip
    assert code == 0
    record = json.loads((out / "unlearn.json").read_text())
    assert record["config"]["vision_fraction"] == 0.5
    assert record["saliency"]["sides"]["vision"]["share"] == pytest.approx(0.5, abs=1e-5)
    assert load_unlearned_tensors(out)
    assert main(["unlearn", "--method", "ga", "--out", str(tmp_path / "ga"),
                 "--vision-fraction", "0.5"]) == 2  # fmt: skip
    assert "--vision-fraction do not apply to ga" in capsys.readouterr().err
