"""The command line end to end: every command has --help, and each one round-trips its files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from asru_lab.cli import COMMANDS, main
from asru_lab.data import load_benchmark
from asru_lab.models.embedded import embedded_dir
from asru_lab.models.loading import load_model
from tests.stub_judge import StubServer
from tests.tiny_models import make_tiny_qwen3_vl

ASRU_LAB = Path(sys.executable).parent / "asru-lab"
needs_embedded = pytest.mark.skipif(
    not (embedded_dir() / "config.json").is_file(), reason="embedded model not built"
)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: asru-lab" in capsys.readouterr().out


def test_console_script_is_installed():
    out = subprocess.run([str(ASRU_LAB), "--help"], capture_output=True, text=True, check=True)
    assert "build-embedded" in out.stdout and "evaluate" in out.stdout


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory) -> Path:
    """A small user-format dataset, written by hand as a user would."""
    from PIL import Image

    root = tmp_path_factory.mktemp("user_data")
    (root / "images").mkdir()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(root / "images" / "a.png")
    people = [
        {"id": "a", "name": "Ada Quist", "split": "forget", "facts": {"birthplace": "Lima"}},
        {"id": "b", "name": "Bo Lund", "split": "retain", "facts": {"birthplace": "Oslo"}},
    ]
    qa = [
        {"person_id": "a", "split": "forget", "image": "images/a.png",
         "question": "Where was this person born?", "answer": "Ada Quist was born in Lima.",
         "attribute": "birthplace"},
        {"person_id": "b", "split": "retain", "image": None,
         "question": "Where was Bo Lund born?", "answer": "Bo Lund was born in Oslo.",
         "attribute": "birthplace", "options": ["Oslo", "Lima", "Riga", "Cork"], "correct": "A"},
    ]  # fmt: skip
    for name, rows in (("profiles.jsonl", people), ("qa.jsonl", qa)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_export_reads_back_a_user_dataset(user_dir, tmp_path):
    out = tmp_path / "copy"
    assert main(["export-benchmark", "--data", str(user_dir), "--out", str(out)]) == 0
    assert load_benchmark(str(out)).fingerprint() == load_benchmark(str(user_dir)).fingerprint()
    assert main(["export-benchmark", "--data", str(user_dir), "--out", str(out)]) == 0  # its own
    (out / "notes.txt").write_text("mine")
    assert main(["export-benchmark", "--data", str(user_dir), "--out", str(out)]) == 2
    assert (out / "notes.txt").read_text() == "mine"


def test_finetune_command_on_a_user_dataset(user_dir, tmp_path):
    model_dir = make_tiny_qwen3_vl(tmp_path / "tiny")
    out = tmp_path / "tuned"
    args = ["finetune", "--model", str(model_dir), "--data", str(user_dir), "--out", str(out)]
    assert main([*args, "--epochs", "2"]) == 0
    record = json.loads((out / "finetune.json").read_text())
    assert record["examples"] == 2 and len(record["losses"]) == 2
    assert load_model(out).num_layers == load_model(model_dir).num_layers


@pytest.mark.slow
def test_synthetic_export_round_trips(tmp_path):
    out = tmp_path / "synthetic"
    assert main(["export-benchmark", "--forget-ratio", "0.05", "--out", str(out)]) == 0
    original = load_benchmark(forget_ratio=0.05)
    exported = load_benchmark(str(out))
    assert exported.fingerprint() == original.fingerprint()
    assert len(exported.people_in("forget")) == 6
    profile = json.loads((out / "profiles.jsonl").read_text().splitlines()[0])
    assert set(profile) == {"id", "name", "split", "facts"}
    assert {"birthplace", "occupation", "birth_year", "hobby"} <= set(profile["facts"])


@needs_embedded
def test_evaluate_with_an_http_judge(tmp_path):
    verdict = {"category": "contextual_refusal", "contextual_refusal": 4, "leakage": 5,
               "naturalness": 4, "reason": "stub"}  # fmt: skip
    server = StubServer()
    for _ in range(3):
        server.reply(json.dumps(verdict))
    try:
        out = tmp_path / "r.json"
        args = ["evaluate", "--splits", "unseen", "--max-items", "3", "--out", str(out)]
        assert main([*args, "--judge-url", server.url, "--judge-model", "stub-judge"]) == 0
    finally:
        server.close()
    quality = json.loads(out.read_text())["splits"]["unseen"]["quality"]
    assert quality["categories"]["contextual_refusal"] == 1.0 and quality["naturalness"] == 4
    assert len(server.requests) == 3 and server.requests[0]["body"]["model"] == "stub-judge"
