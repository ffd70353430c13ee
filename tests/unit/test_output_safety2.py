"""Outputs never destroy an input or each other, a killed replacement is never read, two
writers never mix, and a full disk or exhausted memory is one clear line (issue #29)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from safetensors import SafetensorError

import asru_lab as al
from asru_lab import cli
from asru_lab.artifacts import (
    MARKER,
    IncompleteOutputError,
    OutputError,
    atomic_dir,
    check_complete,
    is_complete,
    writing_lock,
)
from asru_lab.evaluation.answers import ANSWERS_FORMAT, is_answers_file
from asru_lab.evaluation.records import is_items_file
from asru_lab.evaluation.report import is_report_file
from asru_lab.models.embedded import embedded_dir
from asru_lab.probe import SteeringProbe

ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "figures" / "causal" / "probe"


@pytest.fixture(autouse=True)
def private_locks(tmp_path, monkeypatch):
    """Write locks in the test's own cache folder (the user's stays untouched)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def no_loading(monkeypatch):
    """Any model or benchmark load fails the test: the refusal must come before any work."""
    import asru_lab.models.loading as loading

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the outputs were checked")

    for module in (loading, al):
        monkeypatch.setattr(module, "load_model", refuse)
    monkeypatch.setattr(al, "load_benchmark", refuse)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --- reports, answers and items are told apart exactly ------------------------------------------

ANSWERS = {
    "format": ANSWERS_FORMAT,
    "model": "m",
    "method": "vanilla",
    "splits": {"forget": [{"question": "q", "answer": "a"}]},
}
REPORT = {"model": "m", "method": "vanilla", "splits": {"forget": {"rougeL": 1.0}}, "meta": {}}


@pytest.mark.parametrize(
    ("data", "report", "answers"),
    [
        (REPORT, True, False),
        (ANSWERS, False, True),
        ({k: v for k, v in ANSWERS.items() if k != "format"}, False, False),  # answers per split
        ({**REPORT, "format": "something"}, False, False),  # another tool's file
        ({**REPORT, "splits": ["forget"]}, False, False),
    ],
)
def test_reports_and_answers_are_recognised_exactly(data, report, answers, tmp_path):
    path = tmp_path / "f.json"
    path.write_text(json.dumps(data))
    assert is_report_file(path) is report
    assert is_answers_file(path) is answers
    assert not is_items_file(path)


# --- an output is never an input, nor inside one, nor another output ----------------------------


@pytest.fixture
def model_dir(tmp_path) -> Path:
    """A model folder as asru_lab writes it (the embedded model's files, marked)."""
    with atomic_dir(tmp_path / "model") as tmp:
        for f in embedded_dir().iterdir():
            if f.is_file() and f.name != MARKER:
                shutil.copy(f, tmp / f.name)
    return tmp_path / "model"


@pytest.fixture
def probe_dir(tmp_path) -> Path:
    return SteeringProbe.load(PROBE).save(tmp_path / "probe")


def clash_cases(root: Path, model: Path, probe: Path) -> list[tuple[list[str], str, Path]]:
    """(command line, what the error says, the input that must stay as it was)."""
    answers = root / "r.answers.json"
    answers.write_text(json.dumps(ANSWERS))
    report = root / "r.json"
    report.write_text(json.dumps(REPORT))
    link = root / "link"
    link.symlink_to(model)
    E = ["evaluate", "--splits", "forget", "--max-items", "2"]
    return [
        # the cases of the issue
        ([*E, "--answers", str(answers), "--out", str(answers)], "is also --answers", answers),
        ([*E, "--answers", str(answers), "--out", str(answers), "--overwrite"], "is also", answers),
        ([*E, "--out", str(report), "--items-out", str(report)], "both name", report),
        (["finetune", "--model", str(model), "--out", str(model)], "is also --model", model),
        # variants: the answers file that evaluate writes, a link, a folder inside, the default
        ([*E, "--out", str(report), "--items-out", str(answers)], "both name", answers),
        (["reinforce", "--model", str(link), "--out", str(model)], "is also --model", model),
        (["audit", "--model", str(model), "--out", str(model / "audit")], "lies inside", model),
        (["run", "--model", str(model), "--out", str(root)], "lies inside --out", model),
        (["redirect", "--probe", str(probe), "--out", str(probe)], "is also --probe", probe),
        (["unlearn", "--method", "ga", "--probe", str(probe), "--out", str(probe)], "also", probe),
        (["trace-causal", "--probe", str(probe), "--out", str(probe)], "is also --probe", probe),
        (["audit", "--oracle", str(model), "--out", str(model)], "is also --oracle", model),
        ([*E, "--reference", str(model), "--out", str(model / "r.json")], "lies inside", model),
        (["export-benchmark", "--data", str(root), "--out", str(root)], "is also --data", root),
        (["locate", "--out", str(embedded_dir() / "probe")], "lies inside --model", embedded_dir()),
    ]


def test_an_output_that_is_an_input_is_refused_before_any_work(
    tmp_path, model_dir, probe_dir, capsys, no_loading
):
    for argv, says, kept in clash_cases(tmp_path, model_dir, probe_dir):
        before = files(kept) if kept.is_dir() else kept.read_bytes()
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert says in err, err
        assert "never writes where it reads" in err or "both name" in err, err
        assert (files(kept) if kept.is_dir() else kept.read_bytes()) == before, argv


def test_an_input_beside_what_a_folder_writer_writes_is_allowed(tmp_path):
    """trace-causal fills --out entry by entry: its own earlier probe/ inside --out can be the
    --probe it reads (never written when given); an input named like a written entry cannot."""
    from asru_lab.artifacts import check_apart
    from asru_lab.cli.commands import folder_entries_written

    out = tmp_path / "causal"
    args = cli.build_parser().parse_args(
        ["trace-causal", "--probe", str(out / "probe"), "--out", str(out)]
    )
    writes = folder_entries_written(args)
    check_apart({"--probe": out / "probe"}, {"--out": out}, writes)
    with pytest.raises(OutputError, match="lies inside --out"):
        check_apart({"--probe": out / "trace.json"}, {"--out": out}, writes)
    with pytest.raises(OutputError, match="lies inside --out"):  # replaced whole elsewhere
        check_apart({"--probe": out / "probe"}, {"--out": out})
    without_probe = cli.build_parser().parse_args(["trace-causal", "--out", str(out)])
    assert "probe" in folder_entries_written(without_probe)["--out"]


def test_every_path_option_is_known_as_an_input_or_an_output():
    """A new option naming a path must be added to INPUT_OPTIONS or OUTPUT_OPTIONS."""
    from asru_lab.cli.commands import INPUT_OPTIONS, OUTPUT_OPTIONS

    not_paths = {
        "command", "method", "judge_url", "judge_model", "judge_rubric", "size", "dtype",
        "site", "split", "attribute", "question", "corruption", "backend", "solver",
        "positions", "boundary", "protocol", "probe_attribute", "splits", "set", "layers",
        "strengths", "people", "components", "modules", "rewards", "attacks", "methods",
        "tasks", "relearn_modes", "relearn_data",
    }  # fmt: skip
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        for action in parser._actions:
            takes_text = action.type is None and action.nargs != 0 and action.const is None
            if takes_text and action.dest != "help" and not action.choices:
                known = {*INPUT_OPTIONS, *OUTPUT_OPTIONS, *not_paths}
                assert action.dest in known, f"{name} --{action.dest}: a path option?"


# --- a replacement killed half-way is never read --------------------------------------------------


def kill_while_replacing(target: Path, source: Path, placed: int) -> None:
    """Replace `target` by `source`'s files in a forked process killed (no cleanup, no
    rollback) once `placed` new entries have landed in `target`."""
    pid = os.fork()
    if pid == 0:
        rename, landed = Path.rename, []

        def dying(self, dest):
            if Path(dest).parent == target and self.parent.name.startswith(f".{target.name}."):
                landed.append(dest)
                if len(landed) > placed:
                    os._exit(9)
            return rename(self, dest)

        Path.rename = dying
        try:
            with atomic_dir(target) as tmp:
                for f in source.iterdir():
                    if f.is_file() and not f.name.startswith("."):
                        shutil.copy(f, tmp / f.name)
        finally:
            os._exit(1)  # the child never returns into pytest
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 9


@pytest.mark.parametrize("placed", [0, 1, 2])  # old entry moved out / one new in / a mix
def test_a_probe_whose_replacement_was_killed_is_refused_until_written_again(
    placed, probe_dir, tmp_path
):
    kill_while_replacing(probe_dir, PROBE, placed)
    with pytest.raises(IncompleteOutputError, match="was being written when the process stopped"):
        SteeringProbe.load(probe_dir)
    assert not is_complete(probe_dir)  # the reproduce cache computes it again
    SteeringProbe.load(PROBE).save(probe_dir)  # the rerun writes it anew ...
    assert SteeringProbe.load(probe_dir).layer == SteeringProbe.load(PROBE).layer
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".probe.")]
    assert leftovers == []  # ... and removes the killed run's temporary folders


def test_a_model_whose_replacement_was_killed_is_refused(model_dir, capsys, tmp_path):
    kill_while_replacing(model_dir, embedded_dir(), 3)
    with pytest.raises(IncompleteOutputError):
        al.load_model(model_dir)
    out = str(tmp_path / "r.json")
    assert cli.main(["evaluate", "--model", str(model_dir), "--out", out]) == 2
    assert "was being written when the process stopped" in capsys.readouterr().err


def test_an_audit_folder_whose_replacement_was_killed_is_refused(tmp_path):
    from asru_lab.auditing import AuditReport

    source, target = tmp_path / "src", tmp_path / "audit"
    source.mkdir()
    (source / "audit.json").write_text("{}")
    (source / "items.jsonl").write_text("")
    with atomic_dir(target) as tmp:
        (tmp / "audit.json").write_text("{}")
    kill_while_replacing(target, source, 1)
    with pytest.raises(IncompleteOutputError):
        AuditReport.load(target)


def test_a_replacement_that_fails_in_process_rolls_back_complete(probe_dir, monkeypatch):
    before = files(probe_dir)
    rename, failed = Path.rename, []

    def failing(self, dest):
        if Path(dest) == probe_dir / "probe.safetensors" and not failed:
            failed.append(dest)  # the new weights fail to land; the rollback works
            raise OSError(errno.EIO, "I/O error")
        return rename(self, dest)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(OSError):
        SteeringProbe.load(PROBE).save(probe_dir)
    monkeypatch.undo()
    check_complete(probe_dir)
    assert files(probe_dir) == before


# --- two writers of one output -------------------------------------------------------------------


def test_a_second_writer_of_the_same_output_is_refused(tmp_path, capsys, no_loading):
    out = tmp_path / "r.json"
    for spelling in (out, tmp_path / "." / "r.json"):
        with writing_lock([spelling]):
            assert cli.main(["evaluate", "--out", str(out)]) == 2
            err = capsys.readouterr().err
            assert f"another asru-lab process (pid {os.getpid()}) is writing {out}" in err
        assert not out.exists()


def test_the_other_ranks_of_one_distributed_launch_take_no_lock(tmp_path, monkeypatch):
    """`accelerate launch` runs the command in every process: rank 0 holds the lock, and rank
    1 must not be refused as "another asru-lab process" (it reaches the work: here, the load)."""
    import asru_lab.models.loading as loading

    def started(*args, **kwargs):
        raise RuntimeError("work started")

    monkeypatch.setattr(al, "load_model", started)
    monkeypatch.setattr(loading, "load_model", started)
    out = tmp_path / "final"
    with writing_lock([out]):  # rank 0, writing
        monkeypatch.setenv("RANK", "1")
        with pytest.raises(RuntimeError, match="work started"):
            cli.main(["reinforce", "--out", str(out), "--debug"])
        monkeypatch.setenv("RANK", "0")
        assert cli.main(["reinforce", "--out", str(out)]) == 2  # a second job's main process


def test_another_process_holding_the_output_is_named_and_its_death_frees_it(tmp_path):
    out = tmp_path / "probe"
    ready, told = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            with writing_lock([out]):
                os.write(told, b"held")
                time.sleep(60)
        finally:
            os._exit(1)  # the child never returns into pytest
    try:
        assert os.read(ready, 4) == b"held"
        with pytest.raises(OutputError, match=f"pid {pid}\\) is writing {out}"):
            with writing_lock([out]):
                pass
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    with writing_lock([out]):  # a killed holder leaves no lock behind
        pass


# --- a full disk, exhausted memory -----------------------------------------------------------


def failing_command(exc: BaseException):
    def command(args) -> int:
        raise exc

    return command


def chained(outer: BaseException, inner: BaseException) -> BaseException:
    outer.__cause__ = inner
    return outer


@pytest.mark.parametrize(
    ("exc", "says"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "/data/out/model.safetensors"), "disk"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "quota"),
        (
            # safetensors' SafetensorError, as `make-model --out` on a full disk raised it
            SafetensorError(
                "Error while serializing: I/O error: No space left on device (os error 28)"
            ),
            "disk is full",
        ),
        (chained(ValueError("could not save"), OSError(errno.ENOSPC, "full")), "disk is full"),
        (MemoryError(), "out of memory"),
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                "memory: you tried to allocate 4294967296 bytes."
            ),
            "out of memory",
        ),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "smaller batch"),
    ],
)
def test_a_full_disk_or_exhausted_memory_is_one_line_saying_what_to_do(
    exc, says, monkeypatch, capsys, tmp_path
):
    monkeypatch.setitem(cli.COMMANDS, "locate", failing_command(exc))
    assert cli.main(["locate", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err and "internal error" not in err, err


def test_torchs_out_of_memory_error_is_one_line(monkeypatch, capsys, tmp_path):
    import torch

    exc = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
    monkeypatch.setitem(cli.COMMANDS, "locate", failing_command(exc))
    assert cli.main(["locate", "--out", str(tmp_path / "p")]) == 2
    assert "out of memory" in capsys.readouterr().err
