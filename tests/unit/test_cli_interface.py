"""The command line's options: every command documents its flags, an option that sets a config
field defaults to that field (or to None, so that the config or --paper decides), and the method
names are the registry's."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from asru_lab import cli
from asru_lab.baselines import METHODS, UnlearnConfig
from asru_lab.causal import CausalTraceConfig
from asru_lab.evaluation.harness import EvalConfig
from asru_lab.runs.build_embedded import BuildConfig
from asru_lab.runs.reproduce import ReproduceConfig
from asru_lab.stages.finetune import FinetuneConfig
from asru_lab.stages.locate import LocateConfig
from asru_lab.stages.redirect import RedirectConfig
from asru_lab.stages.reinforce import ReinforceConfig

CONFIGS = {
    c.__name__: c
    for c in (
        BuildConfig,
        CausalTraceConfig,
        EvalConfig,
        FinetuneConfig,
        LocateConfig,
        RedirectConfig,
        ReinforceConfig,
        ReproduceConfig,
        UnlearnConfig,
    )
}
# options whose name is not their field's
RENAMED = {
    ("ReinforceConfig", "steps"): "max_steps",
    ("ReinforceConfig", "lr"): "learning_rate",
    ("UnlearnConfig", "baseline_lr"): "lr",
}
PAPER_COMMANDS = ("redirect", "reinforce", "unlearn")  # --paper picks the defaults there


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


def config_options(command: argparse.ArgumentParser):
    """(option, config class, field) for each option of `command` that sets a config field."""
    for group in command._action_groups:
        name = group.title.split(":")[0]
        for action in group._group_actions if name in CONFIGS else ():
            field_name = RENAMED.get((name, action.dest), action.dest)
            fields = {f.name: f for f in dataclasses.fields(CONFIGS[name])}
            assert field_name in fields, f"{action.option_strings[0]}: no {name}.{field_name}"
            yield action, CONFIGS[name], fields[field_name]


def test_every_command_is_a_command_line_command():
    assert set(commands()) == set(cli.COMMANDS)


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_help_runs_and_shows_every_flag(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    for action in commands()[name]._actions:
        for flag in action.option_strings:
            assert flag in shown, f"asru-lab {name} --help does not show {flag}"


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_a_config_option_defaults_to_its_field_or_to_none(name):
    for action, config, field in config_options(commands()[name]):
        flag = action.option_strings[0]
        assert action.default in (None, field.default), f"{name} {flag}: {action.default!r}"
        assert field.metadata.get("help"), f"{config.__name__}.{field.name} has no help"
        assert action.help, f"asru-lab {name} {flag} has no help"


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_a_field_default_typed_on_the_command_line_makes_the_same_config(name):
    """What a flag parses (type, several values, choices) is what its config field takes."""
    required = {"redirect": ["--probe", "p"], "unlearn": ["--method", "ga"]}
    for action, config, field in config_options(commands()[name]):
        if field.default is None or field.default == ():
            continue  # nothing to type: the flag left out is the empty default
        values = field.default if isinstance(field.default, tuple) else (field.default,)
        typed = [action.option_strings[0], *map(str, values)]
        args = cli.build_parser().parse_args([name, "--out", "o", *required.get(name, []), *typed])
        parsed = getattr(args, action.dest)
        parsed = tuple(parsed) if action.nargs else parsed
        assert getattr(config(**{field.name: parsed}), field.name) == field.default, typed


@pytest.mark.parametrize("name", PAPER_COMMANDS)
def test_paper_commands_leave_every_config_option_unset(name):
    """`--paper` must not be overridden by a default the command line filled in."""
    options = list(config_options(commands()[name]))
    assert options and all(action.default is None for action, _, _ in options)


def test_renamed_options_keep_the_names_the_commands_read():
    args = cli.build_parser().parse_args(["reinforce", "--out", "o", "--steps", "3", "--lr", "1"])
    assert (args.steps, args.lr) == (3, 1.0)
    args = cli.build_parser().parse_args(["reproduce", "--out", "o", "--baseline-lr", "1e-4"])
    assert args.baseline_lr == 1e-4


def test_unlearn_offers_exactly_the_registered_methods(capsys, tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["unlearn", "--help"])
    shown = capsys.readouterr().out
    method_help = next(a.help for a in commands()["unlearn"]._actions if a.dest == "method")
    assert method_help.removeprefix("one of: ").split(", ") == list(METHODS)
    for name, method in METHODS.items():
        assert f"{name:<12} {method.summary}" in shown
    assert cli.main(["unlearn", "--method", "nope", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "unknown unlearning method 'nope'" in err and all(name in err for name in METHODS)
