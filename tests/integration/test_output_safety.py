"""The sentinel test: a folder holding a user's file and sub-folder is given as --out to every
command that writes, with and without --overwrite. Nothing unrelated is ever lost."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

import asru_lab as al
from asru_lab.artifacts import MARKER
from asru_lab.cli import build_parser, main
from asru_lab.stages.locate import LocateConfig

TINY_LOCATE = {
    "layers": (5,),
    "strengths": (2.0,),
    "positions": ("last",),
    "heatmap_positions": ("last",),
    "max_examples": 24,
    "retain_examples": 48,
    "sweep_forget": 8,
    "sweep_retain": 50,
    "gate_max_fpr": (0.05,),
}
QUICK = ["--quiet"]
# Every command that writes, with arguments that make it quick on the embedded model.
COMMANDS = {
    "demo": ["--max-items", "2", *QUICK],
    "evaluate": ["--splits", "forget", "--max-items", "2"],
    "locate": QUICK,
    "trace-causal": [
        *["--no-compare", "--max-people", "1", "--layers", "5", "--components", "residual"],
        *["--no-png", *QUICK],
    ],
    "redirect": ["--probe", "{probe}", "--max-forget", "4", "--max-retain", "8", *QUICK],
    "reinforce": [
        *["--steps", "1", "--n-forget", "2", "--n-boundary", "2", "--batch-size", "4"],
        *["--num-generations", "2", "--boundary", "random", *QUICK],
    ],
    "run": ["--steps", "1", "--max-items", "2", *QUICK],
    "unlearn": ["--method", "steer_only", "--probe", "{probe}", *QUICK],
    "distill": [
        *["--steps", "1", "--max-prompts", "3", "--eval-every", "1", "--eval-items", "2"],
        *QUICK,
    ],
    "reproduce": [
        *["--methods", "steer_only", "--forget-ratios", "0.1", "--max-items", "2"],
        *["--no-figures", *QUICK],
    ],
    "export-benchmark": ["--data", "{data}"],
    "audit": [
        *["--max-items", "2", "--attacks", "prefill", "--reference", "none", "--oracle", "none"],
        *QUICK,
    ],
    "build-embedded": ["--steps", "2"],
    "make-model": ["--size", "tiny"],
    "finetune": ["--epochs", "1", "--data", "{data}"],
}

AGAIN = {  # commands run a second time over their own output, with these extra arguments
    "evaluate": [],
    "export-benchmark": [],
    "audit": [],
    "redirect": [],
    "reinforce": ["--resume"],  # an earlier training run is continued, never silently replaced
    "reproduce": [],
    "trace-causal": [],
    "unlearn": [],
    "distill": [],
}


def test_every_writing_command_is_covered():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    writers = {name for name, p in sub.choices.items() if "--out" in p._option_string_actions}
    assert writers == set(COMMANDS)


@pytest.fixture(scope="module")
def probe_dir() -> Path:
    """The committed probe of the embedded model (`asru-lab locate`'s full sweep)."""
    return Path(__file__).resolve().parents[2] / "figures" / "causal" / "probe"


@pytest.fixture(scope="module")
def small_data(bench, tmp_path_factory) -> Path:
    """Two people of the synthetic benchmark as a user dataset (fine-tuning stays quick)."""
    items = []
    for split in ("forget", "retain"):
        person = bench.people_in(split)[0].id
        items += [i for i in bench.items if i.person_id == person and i.task == "qa"][:3]
    out = tmp_path_factory.mktemp("data") / "two"
    return al.export_benchmark(bench.subset(items), out)


@pytest.fixture
def small_settings(monkeypatch):
    """The commands' heavier defaults, shrunk: the same code paths in seconds."""
    import asru_lab.runs.reproduce as reproduce
    import asru_lab.stages.locate as locate_module
    from asru_lab.runs import build_embedded, demo, pipeline
    from asru_lab.runs.reproduce import ReproduceConfig
    from asru_lab.stages.redirect import RedirectConfig
    from asru_lab.stages.reinforce import ReinforceConfig

    monkeypatch.setattr(
        locate_module, "LocateConfig", functools.partial(LocateConfig, **TINY_LOCATE)
    )
    small_reinforce = {"n_forget": 2, "n_boundary": 2, "batch_size": 4, "num_generations": 2}
    monkeypatch.setattr(
        pipeline,
        "PipelineConfig",
        functools.partial(
            pipeline.PipelineConfig,
            locate=LocateConfig(**TINY_LOCATE),
            redirect=RedirectConfig(max_forget=4, max_retain=8),
            reinforce=ReinforceConfig(**small_reinforce, boundary="random", probe_every=0),
        ),
    )
    monkeypatch.setattr(
        reproduce,
        "ReproduceConfig",
        functools.partial(ReproduceConfig, locate=LocateConfig(**TINY_LOCATE)),
    )
    monkeypatch.setattr(
        demo,
        "demo_config",
        lambda max_items, progress: ReproduceConfig(
            methods=(),  # vanilla only: the demo's writing, not its methods
            forget_ratios=(0.1,),
            evaluate=al.EvalConfig(max_items=max_items, splits=("forget",)),
            locate=LocateConfig(**TINY_LOCATE),
            figures=False,
            progress=progress,
        ),
    )
    from asru_lab.data.synthetic import SyntheticConfig
    from asru_lab.models.embedded import TinyDims

    tiny = TinyDims(hidden=64, layers=2, intermediate=128, heads=2, kv_heads=1, vision_hidden=32)
    small_build = functools.partial(
        build_embedded.BuildConfig,
        batch_size=8,
        eval_every=0,
        dims=tiny,
        benchmark=SyntheticConfig(n_known=8, n_strangers=6, n_unseen=3),
    )
    monkeypatch.setattr(build_embedded, "BuildConfig", small_build)


def user_folder(root: Path) -> tuple[Path, dict[str, bytes]]:
    folder = root / "mine"
    (folder / "photos").mkdir(parents=True)
    (folder / "thesis.tex").write_text("\\section{Results}\n")
    (folder / "photos" / "cat.jpg").write_bytes(bytes(range(256)))
    (folder / ".env").write_text("OPENAI_API_KEY=sk-secret\n")
    return folder, files_under(folder)


def files_under(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and p.name != MARKER
    }


def intact(folder: Path, before: dict[str, bytes]) -> bool:
    after = files_under(folder)
    return all(after.get(name) == data for name, data in before.items())


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_user_folder_survives_every_writing_command(
    command, probe_dir, small_data, small_settings, tmp_path, capsys
):
    folder, before = user_folder(tmp_path)
    args = [a.format(probe=probe_dir, data=small_data) for a in COMMANDS[command]]
    out = folder / "results.json" if command == "evaluate" else folder

    # without --overwrite: refused at once, nothing written, one clear line
    if command == "evaluate":  # a file output inside the folder: refused over a user's file
        assert main([command, *args, "--out", str(folder / "thesis.tex")]) == 2
        assert "is not an earlier asru_lab output" in capsys.readouterr().err
        assert main([command, *args, "--out", str(folder)]) == 2  # a folder is never a file
        assert "is a folder" in capsys.readouterr().err
    else:
        assert main([command, *args, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "asru_lab did not write" in err and "--overwrite" in err, err
        assert "Traceback" not in err
    assert files_under(folder) == before and not (folder / MARKER).exists()

    # with --overwrite: the command runs and writes beside the user's files
    assert main([command, *args, "--out", str(out), "--overwrite"]) == 0
    assert intact(folder, before)
    assert len(files_under(folder)) > len(before)  # it did write its output

    # a second run over its own output (quick commands): still nothing of the user's is lost
    if command in AGAIN:
        assert main([command, *args, *AGAIN[command], "--out", str(out), "--overwrite"]) == 0
        assert intact(folder, before)


def test_a_file_at_the_output_path_is_never_replaced(tmp_path, capsys):
    precious = tmp_path / "probe"
    precious.write_text("not a folder")
    for extra in ([], ["--overwrite"]):
        assert main(["locate", "--out", str(precious), *extra]) == 2
        assert "is a file" in capsys.readouterr().err
    assert precious.read_text() == "not a folder"


def test_an_unwritable_output_is_refused_before_any_model_is_loaded(tmp_path, capsys, monkeypatch):
    import asru_lab.models.loading as loading

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(loading, "load_model", no_loading)
    monkeypatch.setattr(al, "load_model", no_loading)
    (tmp_path / "file").write_text("x")
    for command in ("locate", "redirect", "reinforce", "unlearn", "finetune", "run"):
        extra = {"redirect": ["--probe", "p"], "unlearn": ["--method", "ga"]}.get(command, [])
        assert main([command, *extra, "--out", str(tmp_path / "file" / "out")]) == 2
        assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["evaluate", "--out", str(tmp_path / "file" / "r.json")]) == 2


def test_the_committed_outputs_are_asru_labs_own():
    """`asru-lab reproduce --out figures` (README) may refresh the committed figures."""
    from asru_lab.artifacts import check_output
    from asru_lab.models.embedded import embedded_dir

    root = Path(__file__).resolve().parents[2]
    for folder in (root / "figures", root / "figures" / "causal", embedded_dir()):
        check_output(folder)
    assert json.loads((embedded_dir() / MARKER).read_text())["written_by"] == "asru_lab"
