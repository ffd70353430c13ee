"""`asru_lab.artifacts`: outputs never destroy what asru_lab did not write."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from asru_lab.artifacts import (
    MARKER,
    OutputError,
    atomic_dir,
    check_output,
    check_output_file,
    claim_output,
    write_text_atomic,
)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes), asru_lab's marker left out."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


def user_folder(tmp_path: Path) -> Path:
    """A folder a user already keeps things in: a file, a sub-folder, a hidden file."""
    folder = tmp_path / "mine"
    (folder / "data").mkdir(parents=True)
    (folder / "notes.txt").write_text("my notes\n")
    (folder / "data" / "table.csv").write_text("a,b\n1,2\n")
    (folder / ".hidden").write_bytes(b"\x00\x01")
    return folder


def write(target: Path, files: dict[str, str], **kwargs) -> Path:
    with atomic_dir(target, **kwargs) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text)
    return target


def test_a_new_folder_is_written_whole_and_marked(tmp_path):
    out = write(tmp_path / "a" / "b" / "probe", {"probe.json": "{}", "w.bin": "x"})
    assert snapshot(out) == {"probe.json": b"{}", "w.bin": b"x"}
    marker = json.loads((out / MARKER).read_text())
    assert marker["entries"] == ["probe.json", "w.bin"] and marker["written_by"] == "asru_lab"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_a_folder_of_someone_else_is_refused_and_left_as_it_was(tmp_path):
    mine = user_folder(tmp_path)
    before = snapshot(mine)
    with pytest.raises(
        OutputError, match=r"did not write \(\.hidden, data, notes\.txt\).*--overwrite"
    ):
        write(mine, {"probe.json": "{}"})
    with pytest.raises(OutputError, match="did not write"):
        check_output(mine)
    assert snapshot(mine) == before and not (mine / MARKER).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temp folder left


def test_overwrite_writes_beside_unrelated_files_and_keeps_them(tmp_path):
    mine = user_folder(tmp_path)
    before = snapshot(mine)
    write(mine, {"probe.json": "1", "sweep.json": "s"}, overwrite=True)
    write(mine, {"probe.json": "2"}, overwrite=True)  # again: replaces its own files only
    after = snapshot(mine)
    assert {k: after[k] for k in before} == before
    assert after["probe.json"] == b"2" and "sweep.json" not in after  # its own stale file goes
    assert json.loads((mine / MARKER).read_text())["entries"] == ["probe.json"]
    with pytest.raises(OutputError, match="did not write"):  # the user's files still count
        check_output(mine)


def test_an_unrelated_file_with_an_output_name_is_never_replaced(tmp_path):
    mine = user_folder(tmp_path)
    (mine / "config.json").write_text('{"mine": true}')
    before = snapshot(mine)
    with pytest.raises(OutputError, match=r"config\.json.*saved to .*mine\.new-"):
        write(mine, {"config.json": "{}", "model.bin": "w"}, overwrite=True)
    assert snapshot(mine) == before
    (kept,) = [p for p in tmp_path.iterdir() if p.name.startswith("mine.new-")]
    assert snapshot(kept) == {"config.json": b"{}", "model.bin": b"w"}  # the work is not lost


def test_its_own_earlier_output_is_replaced_without_asking(tmp_path):
    out = write(tmp_path / "model", {"config.json": "1", "old.json": "o", "training": ""})
    write(out, {"config.json": "2"}, keep=("training",))
    assert snapshot(out) == {"config.json": b"2", "training": b""}
    (out / "notes.txt").write_text("added by the user later")
    with pytest.raises(OutputError, match=r"notes\.txt"):  # now it holds something else too
        write(out, {"config.json": "3"})
    write(out, {"config.json": "3"}, keep=("training",), overwrite=True)
    assert snapshot(out) == {
        "config.json": b"3",
        "notes.txt": b"added by the user later",
        "training": b"",
    }


def test_a_file_where_a_folder_goes_is_always_refused(tmp_path):
    file = tmp_path / "results"
    file.write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match="is a file.*never replaces a file"):
            write(file, {"a": "b"}, overwrite=overwrite)
    assert file.read_text() == "precious"
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output(file / "below")


def test_a_failure_while_writing_changes_nothing(tmp_path):
    out = write(tmp_path / "probe", {"probe.json": "good"})
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_dir(out) as tmp:
            (tmp / "probe.json").write_text("half")
            raise RuntimeError("boom")
    assert snapshot(out) == {"probe.json": b"good"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe"]


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_permissions_follow_the_umask(tmp_path, mask):
    import torch
    from safetensors.torch import save_file

    old = os.umask(mask)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            save_file({"x": torch.zeros(2)}, str(tmp / "w.safetensors"))  # private by itself
            (tmp / "sub").mkdir()
        written = write_text_atomic(tmp_path / "out" / "t.json", "{}")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "out") == 0o777 & ~mask
    assert mode(tmp_path / "out" / "sub") == 0o777 & ~mask
    assert mode(tmp_path / "out" / "w.safetensors") == 0o666 & ~mask
    assert mode(written) == 0o666 & ~mask
    assert mode(tmp_path / "out" / MARKER) == 0o666 & ~mask


def test_claimed_folders_record_what_is_written_into_them(tmp_path):
    out = claim_output(tmp_path / "run")
    write_text_atomic(out / "table.csv", "x")
    write(out / "probe", {"probe.json": "{}"})
    claim_output(out / "training")
    assert json.loads((out / MARKER).read_text())["entries"] == ["probe", "table.csv", "training"]
    check_output(out)  # all of it is asru_lab's: a rerun may write there
    (out / "mine.txt").write_text("x")
    with pytest.raises(OutputError, match=r"mine\.txt"):
        claim_output(out)


def test_a_folder_holding_only_asru_lab_folders_is_its_own(tmp_path):
    out = tmp_path / "redirected"
    claim_output(out / "checkpoints")  # a run writes its checkpoints before its model
    write(out, {"config.json": "{}"})
    assert (out / "checkpoints").is_dir() and (out / "config.json").is_file()


def test_file_outputs_replace_only_their_own_kind(tmp_path):
    def is_result(path: Path) -> bool:
        return "splits" in json.loads(path.read_text())

    earlier, other = tmp_path / "r.json", tmp_path / "o.json"
    earlier.write_text('{"splits": {}}')
    other.write_text('{"my": "data"}')
    assert check_output_file(earlier, own=is_result) == earlier
    with pytest.raises(OutputError, match=r"o\.json exists and is not an earlier asru_lab"):
        check_output_file(other, own=is_result)
    assert check_output_file(other, overwrite=True) == other
    with pytest.raises(OutputError, match="is a folder"):
        check_output_file(tmp_path, overwrite=True)
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_file(tmp_path / "f" / "r.json")


def test_an_evaluation_json_replaces_only_an_earlier_one(tmp_path):
    from asru_lab.evaluation.report import EvalReport

    report = EvalReport(model="m", method="vanilla", splits={"forget": {"mcq_acc": 1.0}})
    path = tmp_path / "results.json"
    report.to_json(path)
    report.to_json(path)  # its own earlier result
    mine = tmp_path / "mine.json"
    mine.write_text('{"my": "numbers"}')
    with pytest.raises(OutputError, match="not an earlier asru_lab output"):
        report.to_json(mine)
    assert mine.read_text() == '{"my": "numbers"}'
    report.to_json(mine, overwrite=True)
    assert EvalReport.from_json(mine).splits == report.splits
