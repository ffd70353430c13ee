"""The CLI's error contract: a library error is one line and exit 2, a bug one line and exit 1,
tracebacks only with --debug."""

from __future__ import annotations

import pytest

from asru_lab import cli
from asru_lab.probe import ProbeError


def fail_with(exc: BaseException):
    def command(args) -> int:
        raise exc

    return command


@pytest.mark.parametrize(
    "exc", [ProbeError("probe field 'alpha' is nan"), PermissionError(13, "Permission denied")]
)
def test_a_library_or_system_error_is_one_line_and_exit_2(exc, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(cli.COMMANDS, "locate", fail_with(exc))
    assert cli.main(["locate", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("asru-lab locate: error: ") and "\n" not in err
    assert "Traceback" not in err
    with pytest.raises(type(exc)):
        cli.main(["locate", "--out", str(tmp_path / "p"), "--debug"])


def test_a_bug_says_so_in_one_line_and_exits_1(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(cli.COMMANDS, "locate", fail_with(TypeError("unsupported operand")))
    assert cli.main(["locate", "--out", str(tmp_path / "p")]) == 1
    err = capsys.readouterr().err.strip()
    assert "internal error (TypeError: unsupported operand)" in err and "--debug" in err
    assert "\n" not in err
    with pytest.raises(TypeError):
        cli.main(["locate", "--out", str(tmp_path / "p"), "--debug"])


def test_options_that_do_not_go_together_exit_2(capsys, tmp_path):
    out = str(tmp_path / "r.json")
    assert cli.main(["evaluate", "--out", out, "--judge-url", "http://127.0.0.1:9"]) == 2
    assert "--judge-url needs --judge-model" in capsys.readouterr().err


def test_forget_ratio_and_seed_with_a_user_dataset(bench, capsys, tmp_path):
    from asru_lab.data import export_benchmark

    data = export_benchmark(
        bench.subset(bench.split("forget")[:2] + bench.split("retain")[:2]), tmp_path / "data"
    )
    args = ["export-benchmark", "--data", str(data)]
    assert cli.main([*args, "--forget-ratio", "0.05", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "--forget-ratio only applies to the synthetic benchmark" in err
    assert not (tmp_path / "a").exists()
    assert cli.main([*args, "--seed", "3", "--out", str(tmp_path / "b")]) == 0
    assert "--seed does not choose the forgotten people" in capsys.readouterr().err
    assert cli.main([*args, "--split-seed", "0", "--out", str(tmp_path / "c")]) == 2
    assert "--split-seed only applies to the synthetic benchmark" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_split_seed_keeps_the_forget_set_while_seed_varies_the_run(tmp_path):
    """Training seeds of one forget set: --split-seed draws who is forgotten, --seed the rest."""
    from asru_lab.cli.commands import _benchmark
    from asru_lab.cli.options import build_parser

    def forgotten(*options: str) -> set[str]:
        args = build_parser().parse_args(["export-benchmark", *options, "--out", str(tmp_path)])
        return {q.person_id for q in _benchmark(args).split("forget")}

    assert forgotten("--seed", "1", "--split-seed", "0") == forgotten() == forgotten("--seed", "0")
    assert forgotten("--seed", "1") != forgotten()  # --seed alone still draws them
    assert forgotten("--split-seed", "1") == forgotten("--seed", "1")
