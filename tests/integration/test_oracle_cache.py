"""The oracle's side of an audit kept on disk: a later process finds exactly what it would have
computed, and nothing else — another oracle, other settings, a damaged entry or
`oracle_cache=False` means the oracle is attacked again."""

from __future__ import annotations

import json

import pytest
import torch

import asru_lab as al
from asru_lab.auditing import AuditConfig, audit, oracle_cache, relearn, run

CONFIG = AuditConfig(
    attacks=("prefill", "relearn"),
    max_items=3,
    retain_items=4,
    relearn_steps=(0, 1),
    relearn_modes=("lora",),
    relearn_data=("forget",),
    progress=False,
)


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """A new process's view: nothing in memory, an empty cache folder of its own."""
    monkeypatch.setenv(oracle_cache.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(run, "_ORACLE_AUDITS", {})
    monkeypatch.setattr(relearn, "_ORACLE_CURVES", {})
    return tmp_path / "oracle-audits"


def _forget_process(monkeypatch) -> None:
    monkeypatch.setattr(run, "_ORACLE_AUDITS", {})
    monkeypatch.setattr(relearn, "_ORACLE_CURVES", {})


def _oracle_parts(report) -> tuple:
    curves = [s["oracle"] for s in report.results["relearn"]["settings"]]
    oracle_records = [r for r in report.records if r["attack"].startswith("oracle_")]
    return report.results["leaks"], report.results["oracle_union"], curves, oracle_records


def test_a_later_audit_finds_the_oracle_side_on_disk_and_the_same_numbers(
    lm, bench, fresh, monkeypatch
):
    oracle = al.load_oracle()
    first = audit(lm, bench, oracle=oracle, config=CONFIG)
    assert first.results["oracle_side"] == "computed"
    assert first.results["relearn"]["oracle_side"] == "computed"
    assert sorted(p.name.split("-")[0] for p in fresh.glob("*.json")) == ["audit", "relearn"]
    _forget_process(monkeypatch)
    reloaded = al.load_oracle()
    again = audit(lm, bench, oracle=reloaded, config=CONFIG)
    assert again.results["oracle_side"] == "disk"
    assert again.results["relearn"]["oracle_side"] == "disk"
    assert _oracle_parts(again) == _oracle_parts(first)
    assert again.summary == first.summary
    # within the process, memory answers first
    third = audit(lm, bench, oracle=reloaded, config=CONFIG)
    assert third.results["oracle_side"] == third.results["relearn"]["oracle_side"] == "memory"


def test_other_settings_or_another_oracle_are_not_found(lm, bench, fresh, monkeypatch):
    from dataclasses import replace

    oracle = al.load_oracle()
    audit(lm, bench, oracle=oracle, config=CONFIG)
    _forget_process(monkeypatch)
    other = audit(lm, bench, oracle=oracle, config=replace(CONFIG, seed=1))
    assert other.results["oracle_side"] == "computed"
    _forget_process(monkeypatch)
    edited = oracle.clone()
    with torch.no_grad():
        next(edited.model.parameters()).view(-1)[0] += 1e-3
    assert oracle_cache.weights_digest(edited) != oracle_cache.weights_digest(oracle)
    assert edited.fingerprint() == oracle.fingerprint()  # the name and config cannot tell
    moved = audit(lm, bench, oracle=edited, config=CONFIG)
    assert moved.results["oracle_side"] == "computed"
    assert moved.results["relearn"]["oracle_side"] == "computed"
    assert len(list(fresh.glob("*.json"))) == 6


def test_a_damaged_entry_is_set_aside_with_a_warning_and_rewritten(lm, bench, fresh, monkeypatch):
    oracle = al.load_oracle()
    audit(lm, bench, oracle=oracle, config=CONFIG)
    entry = next(fresh.glob("audit-*.json"))
    entry.write_text('{"format": "asru_lab.oracle_side", "format_')
    _forget_process(monkeypatch)
    with pytest.warns(UserWarning, match="damaged oracle cache entry"):
        again = audit(lm, bench, oracle=oracle, config=CONFIG)
    assert again.results["oracle_side"] == "computed"
    assert json.loads(entry.read_text())["payload"]["results"]


def test_no_oracle_cache_neither_reads_nor_writes(lm, bench, fresh, monkeypatch):
    oracle = al.load_oracle()
    report = audit(lm, bench, oracle=oracle, config=CONFIG, oracle_cache=False)
    assert report.results["oracle_side"] == "computed" and not fresh.exists()
    audit(lm, bench, oracle=oracle, config=CONFIG)
    _forget_process(monkeypatch)
    again = audit(lm, bench, oracle=oracle, config=CONFIG, oracle_cache=False)
    assert again.results["oracle_side"] == "computed"
    assert again.results["relearn"]["oracle_side"] == "computed"


def test_the_cli_flag_turns_the_cache_off(tmp_path, monkeypatch):
    import asru_lab.auditing as auditing
    from asru_lab.cli import main

    asked = []

    class Stop(Exception):
        pass

    def fake(*args, **kwargs):
        asked.append(kwargs["oracle_cache"])
        raise Stop

    monkeypatch.setattr(auditing, "audit", fake)
    for flags, expected in (([], True), (["--no-oracle-cache"], False)):
        main(["audit", "--out", str(tmp_path / "a"), "--quiet", *flags])  # stops at audit()
        assert asked[-1] is expected


def test_the_weights_digest_reads_every_dtype_and_shape():
    from types import SimpleNamespace

    def model(dtype, scalar=1.0):
        module = torch.nn.Linear(2, 3).to(dtype)
        torch.nn.init.constant_(module.weight, 0.5)
        torch.nn.init.constant_(module.bias, 0.0)
        module.register_buffer("scale", torch.tensor(scalar, dtype=dtype))  # 0-d
        return SimpleNamespace(model=module)

    digests = {
        oracle_cache.weights_digest(model(torch.bfloat16)),
        oracle_cache.weights_digest(model(torch.float32)),
        oracle_cache.weights_digest(model(torch.float32, scalar=2.0)),
    }
    assert len(digests) == 3
    assert oracle_cache.weights_digest(model(torch.bfloat16)) in digests  # a new object, same
