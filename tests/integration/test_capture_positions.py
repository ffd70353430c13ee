"""Several token positions from one forward pass: the same numbers as one capture per position,
one pass per batch whatever the number of positions, and locate's size flags."""

from __future__ import annotations

import math

import pytest
import torch

from asru_lab.capture import TraceError, capture, capture_positions
from asru_lab.cli import main

POSITIONS = ["last", -2, -4, "prompt"]


@pytest.fixture(scope="module")
def items(bench):
    return bench.questions("forget", "qa")[:10] + bench.questions("retain", "qa")[:7]


def count_passes(lm):
    calls = []
    handle = lm.model.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


def test_one_pass_gives_what_one_capture_per_position_gives(lm, bench, items):
    layers = [0, 3, 5]
    direction = {
        k: torch.randn(2, lm.hidden_size, generator=torch.Generator().manual_seed(k))
        for k in layers
    }
    calls, handle = count_passes(lm)
    try:
        together = capture_positions(
            lm,
            bench,
            items,
            positions=POSITIONS,
            layers=layers,
            keep_raw={-2: [3], "prompt": True},
            directions={p: direction for p in POSITIONS},
            batch_size=8,
            progress=False,
        )
    finally:
        handle.remove()
    assert len(calls) == math.ceil(len(items) / 8)  # one forward pass per batch
    for position in POSITIONS:
        alone = capture(
            lm,
            bench,
            items,
            layers=layers,
            position=position,
            keep_raw={-2: [3], "prompt": True}.get(position, False),
            directions=direction,
            batch_size=8,
            progress=False,
        )
        got = together[position]
        assert got.position == position and got.count == alone.count
        assert torch.equal(got.sum, alone.sum) and torch.equal(got.sumsq, alone.sumsq)
        assert got.raw.keys() == alone.raw.keys()
        for layer in alone.raw:
            assert torch.equal(got.raw[layer], alone.raw[layer])
        for layer in layers:
            assert torch.equal(got.projections[layer], alone.projections[layer])
        assert got.person_ids == alone.person_ids


def test_answer_cannot_share_a_pass_and_settings_must_name_captured_positions(lm, bench, items):
    with pytest.raises(TraceError, match="'answer'.*cannot share a pass"):
        capture_positions(lm, bench, items, positions=["last", "answer"], progress=False)
    with pytest.raises(TraceError, match="positions not captured: \\[-3\\]"):
        capture_positions(lm, bench, items, positions=["last"], keep_raw={-3: True}, progress=False)
    with pytest.raises(TraceError, match="unknown position 'middle'"):
        capture_positions(lm, bench, items, positions=["middle"], progress=False)


def test_locate_sizes_come_from_the_command_line(monkeypatch, tmp_path):
    seen = {}

    def fake_locate(lm, bench, config):
        seen.update(vars(config))
        raise TraceError("stop here")

    monkeypatch.setattr("asru_lab.stages.locate.locate", fake_locate)
    args = ["locate", "--out", str(tmp_path / "p"), "--max-examples", "16"]
    args += ["--retain-examples", "40", "--sweep-forget", "8", "--sweep-retain", "50"]
    args += ["--n-candidates", "2", "--max-new-tokens", "12", "--batch-size", "4"]
    assert main(args) == 2
    assert (seen["max_examples"], seen["retain_examples"]) == (16, 40)
    assert (seen["sweep_forget"], seen["sweep_retain"], seen["n_candidates"]) == (8, 50, 2)
    assert (seen["max_new_tokens"], seen["batch_size"]) == (12, 4)
