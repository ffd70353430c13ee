"""`build-embedded` is deterministic, and its fast collator matches the real processor; its format
stage renders the `mllmu` protocol's prompts, leaves an oracle's forget people out and records
itself; what it cannot continue is refused. The base recipe can show the official formats too
(`official_*` families), an oracle's forget people left out of them as of everything."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from asru_lab import cli
from asru_lab.data import synthetic as syn
from asru_lab.data import synthetic_text as wording
from asru_lab.data.synthetic import SyntheticConfig, build_world, load_synthetic
from asru_lab.errors import AsruLabError
from asru_lab.evaluation.judge import is_refusal
from asru_lab.evaluation.protocols import mllmu
from asru_lab.evaluation.protocols.base import modality
from asru_lab.evaluation.protocols.mllmu import MllmuProtocol
from asru_lab.generation import Turn, build_chat_prompt, encode
from asru_lab.models.embedded import ORACLE_NAME, TinyDims
from asru_lab.models.loading import load_model
from asru_lab.runs.build_embedded import (
    DEFAULT_TASK_WEIGHTS,
    FORMAT_CURRICULUM,
    FORMAT_STAGES,
    FORMAT_WEIGHTS,
    MCQ_WEIGHTS,
    BuildConfig,
    Collator,
    FormatStageConfig,
    OfficialFormatSampler,
    OfficialPrompts,
    TrainingSampler,
    _example_mean_loss,
    build_embedded,
    by_turns,
    curriculum,
    format_stage,
)
from asru_lab.validation import ConfigError
from tests.tiny_models import make_tiny_qwen3_vl

SMALL = BuildConfig(
    steps=4,
    batch_size=8,
    eval_every=0,
    dims=TinyDims(hidden=64, layers=2, intermediate=128, heads=2, kv_heads=1, vision_hidden=32),
    benchmark=SyntheticConfig(n_known=8, n_strangers=6, n_unseen=3),
)


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    a = tmp_path_factory.mktemp("build_a")
    b = tmp_path_factory.mktemp("build_b")
    return build_embedded(a, SMALL, progress=False), a, build_embedded(b, SMALL, progress=False), b


def test_same_seed_gives_the_same_weights(two_builds):
    _, a, _, b = two_builds
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


def test_a_different_seed_gives_different_weights(tmp_path, two_builds):
    _, a, _, _ = two_builds
    other = BuildConfig(**{**SMALL.__dict__, "seed": 1})
    build_embedded(tmp_path / "c", other, progress=False)
    wa, wc = load_file(a / "model.safetensors"), load_file(tmp_path / "c" / "model.safetensors")
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


def test_build_output_loads_and_records_its_config(two_builds):
    _, a, _, _ = two_builds
    lm = load_model(a)
    assert lm.adapter.family == "qwen3_vl" and lm.num_layers == 2
    assert lm.info["build"]["config"]["steps"] == 4
    assert (a / "build.json").is_file()


def test_collator_matches_the_processor(two_builds):
    lm, _, _, _ = two_builds
    world = build_world(SMALL.benchmark)
    sampler = TrainingSampler(world, SMALL.task_weights, seed=3)
    path = sampler.image_paths()[0]
    pixels = lm.processor.image_processor([world.render(path)], return_tensors="pt")
    collate = Collator(lm, {path: pixels["pixel_values"]}, tokens_per_image=16)
    examples = [
        ((Turn("Who is this person?", path),), "This is X."),
        ((Turn("Where was Y born?"),), "Z."),
    ]
    batch = collate(examples)
    ref = encode(lm, [world.render(path), None], [turns[0].text for turns, _ in examples])
    for row, (_, answer) in enumerate(examples):
        n_answer = len(lm.tokenizer(answer, add_special_tokens=False)["input_ids"]) + 1
        ours = batch["input_ids"][row][batch["attention_mask"][row].bool()][:-n_answer]
        theirs = ref["input_ids"][row][ref["attention_mask"][row].bool()]
        assert ours.tolist() == theirs.tolist()
        labelled = batch["labels"][row][batch["labels"][row] != -100]
        assert len(labelled) == n_answer
    assert torch.equal(batch["pixel_values"], ref["pixel_values"])
    assert torch.equal(batch["image_grid_thw"], ref["image_grid_thw"])


# --- the format stage: MLLMU-Bench's official prompts ----------------------------------------

STAGE = FormatStageConfig(steps=2, batch_size=4, eval_items=4)
ORACLE = (0.25, 0)  # 2 of SMALL's 8 known people


@pytest.fixture(scope="module")
def small_oracle(tmp_path_factory):
    out = tmp_path_factory.mktemp("oracle") / "m"
    oracle = replace(SMALL, oracle_forget_ratio=ORACLE[0], oracle_split_seed=ORACLE[1])
    build_embedded(out, oracle, progress=False)
    return out, oracle.left_out()


@pytest.fixture(scope="module")
def staged(two_builds, tmp_path_factory):
    _, base, _, _ = two_builds
    out = tmp_path_factory.mktemp("staged") / "m"
    format_stage(base, out, STAGE, progress=False)
    return base, out


# the test split's held-out wordings, as patterns over a rendered prompt
PARAPHRASES = [
    re.escape(q.replace("___", "[Blank]")).replace(re.escape("{subj}"), ".+")
    for q in [
        *(q for qs in wording.QUESTIONS_TEST.values() for q in qs),
        *wording.CLOZE_TEST.values(),
    ]
]


def _texts(example) -> str:
    turns, answer = example
    return " ".join([answer] + [t.text + " " + (t.reply or "") for t in turns])


def test_format_stage_prompts_are_the_mllmu_protocols(two_builds):
    """Each official family renders MLLMU-Bench's wording (spelled out here), as the `mllmu`
    protocol sends a benchmark item, and is answered as the format asks."""
    lm, _, _, _ = two_builds
    world = build_world(SMALL.benchmark)
    sampler = OfficialFormatSampler(world, FORMAT_WEIGHTS, seed=0, max_shots=2)
    seen = set()
    for _ in range(400):
        family = sampler.rng.choice(list(FORMAT_WEIGHTS))
        item, (turns, answer) = sampler.example(family)
        asked, kind = turns[-1], "image" if item.image else "text"
        assert asked.reply is None and (asked.image is None) == family.endswith("_text")
        if item.task == "mcq":
            lines = "".join(f"\n{k}: {o}" for k, o in zip("ABCD", item.options, strict=True))
            assert asked.text.endswith(
                f"{lines}\nJust give ONE letter representing the answer directly."
            )
            for shot in turns[:-1]:  # few-shot turns of the same modality, answered by letter
                assert shot.reply in "ABCD" and (shot.image is None) == (asked.image is None)
                assert shot.text.endswith("Just give ONE letter representing the answer directly.")
            seen.add(len(turns) - 1)
        elif item.task == "cloze":
            assert "[Blank]" in asked.text and "___" not in asked.text
            assert asked.text.endswith(
                "\nPlease **ONLY** provide the correct answer that should replace the [Blank]."
            )
        else:
            instruction = {
                "image": "in one sentence accurately in ENGLISH!!.",
                "text": "in one sentence in ENGLISH!!",
            }[kind]
            assert asked.text == (
                f"{item.question}\nAnswer the question based on your trained knowledge "
                + instruction
            )
        if family.startswith("stranger"):
            assert is_refusal(answer) and answer[0] not in "ABCD", answer  # no choice, parsed
        else:
            assert answer == {"mcq": item.correct_letter, "cloze": item.value}.get(
                item.task, item.answer
            )
        # training views and wordings only: never a held-out view or paraphrase, nobody unseen
        for turn in turns:
            if turn.image and turn.image.startswith("images/k"):  # strangers: every view
                assert int(turn.image[-5]) < syn.TRAIN_VIEWS, turn.image
            assert not any(re.match(held_out, turn.text) for held_out in PARAPHRASES), turn.text
        assert item.person_id[0] in "ks"
    assert seen == {0, 1, 2}
    bench = load_synthetic(config=SMALL.benchmark)
    protocol, official = MllmuProtocol(bench), OfficialPrompts()
    for item in bench.split("retain"):
        shots = protocol.shot_items(modality(item)) if item.task == "mcq" else ()
        assert official.turns(item, shots) == protocol.prompt(item).turns


def test_a_few_shot_chat_collates_as_the_processor_encodes_it(two_builds):
    lm, _, _, _ = two_builds
    world = build_world(SMALL.benchmark)
    sampler = OfficialFormatSampler(world, FORMAT_WEIGHTS, seed=1, max_shots=2)
    while len((example := sampler.example("mcq_image"))[1][0]) < 3:
        pass
    turns, answer = example[1]
    paths = [t.image for t in turns]
    images = [world.render(p) for p in paths]
    pixels = lm.processor.image_processor(images, return_tensors="pt")["pixel_values"]
    per = pixels.shape[0] // len(paths)
    cache = {p: pixels[k * per : (k + 1) * per] for k, p in enumerate(paths)}
    batch = Collator(lm, cache, tokens_per_image=16)([(turns, answer)])
    ref = lm.processor(
        text=[build_chat_prompt(lm, turns)], images=images, return_tensors="pt", padding=True
    )
    n_answer = len(lm.tokenizer(answer, add_special_tokens=False)["input_ids"]) + 1
    assert batch["input_ids"][0][:-n_answer].tolist() == ref["input_ids"][0].tolist()
    assert torch.equal(batch["pixel_values"], ref["pixel_values"])
    assert torch.equal(batch["image_grid_thw"], ref["image_grid_thw"])


def test_the_oracles_format_stage_leaves_out_its_forget_people(small_oracle, tmp_path):
    base, forget = small_oracle
    world = build_world(SMALL.benchmark)

    def shown(left_out: set[str]) -> set[str]:
        sampler = OfficialFormatSampler(world, FORMAT_WEIGHTS, 0, left_out)
        examples = [sampler.sample() for _ in range(300)]
        return {
            p.id
            for p in world.people
            for ex in examples
            if p.name in _texts(ex) or any(f"/{p.id}_v" in (t.image or "") for t in ex[0])
        }

    assert forget <= shown(set())  # the vanilla model's stage shows them: the check can fail
    assert not forget & shown(forget)
    lm = format_stage(base, tmp_path / "m", STAGE, oracle=ORACLE, progress=False)
    record = load_model(tmp_path / "m").info
    assert record["format_stage"]["left_out"] == sorted(forget) == record["oracle"]["forget_ids"]
    assert lm.name == ORACLE_NAME == load_model(tmp_path / "m").name


def test_the_format_stage_records_itself_and_is_deterministic(staged, tmp_path):
    base, out = staged
    info = load_model(out).info
    stage = info["format_stage"]
    (only,) = stage["stages"]
    assert only["config"]["steps"] == STAGE.steps and only["config"]["format_share"] == 0.5
    assert len(only["progress"]) == 1 and only["seconds"] > 0
    assert (
        stage["base"]["model_sha256"]
        == hashlib.sha256((base / "model.safetensors").read_bytes()).hexdigest()
    )
    assert info["build"] == load_model(base).info["build"]  # how the base was made, kept
    build = json.loads((out / "build.json").read_text())
    assert build["format_stage"] == stage and build["config"] == info["build"]["config"]
    again = format_stage(base, tmp_path / "again", STAGE, progress=False)
    w1, w2 = load_file(out / "model.safetensors"), load_file(tmp_path / "again/model.safetensors")
    w0 = load_file(base / "model.safetensors")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)  # it trained
    assert again.info["format_stage"]["stages"][0]["config"] == only["config"]


def test_a_curriculum_runs_its_stages_in_order_each_with_its_own_mixture(two_builds, tmp_path):
    """A curriculum trains each stage after the previous one (a lookup-only stage draws nothing
    but lookups, a multiple-choice stage its own weights), records each, and is deterministic."""
    _, base, _, _ = two_builds
    stages = curriculum(("lookup", "mcq"), steps=2, batch_size=8, eval_items=4)
    assert [s.name for s in stages] == ["lookup", "mcq"]
    assert stages[0].lookup_share == 1.0 and stages[1].format_weights == MCQ_WEIGHTS
    lm = format_stage(base, tmp_path / "c", stages, progress=False)
    record = load_model(tmp_path / "c").info["format_stage"]
    assert [s["config"]["name"] for s in record["stages"]] == ["lookup", "mcq"]
    assert [s["config"]["lr"] for s in record["stages"]] == [3e-3, 1e-3]
    assert record["stages"] == lm.info["format_stage"]["stages"]
    one = format_stage(base, tmp_path / "one", stages[:1], progress=False)
    format_stage(base, tmp_path / "again", stages, progress=False)
    weights = [load_file(tmp_path / d / "model.safetensors") for d in ("c", "one", "again")]
    assert all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # mcq trained
    assert one.info["format_stage"]["stages"][0] == {
        **record["stages"][0],
        "seconds": one.info["format_stage"]["stages"][0]["seconds"],
    }


def test_a_curriculum_resumes_where_it_stopped_with_the_same_weights(two_builds, tmp_path):
    """The output holds the model after every stage; --resume continues from the stages it
    holds and ends with the weights of one uninterrupted run; other stages are refused."""
    _, base, _, _ = two_builds
    stages = curriculum(("lookup", "mcq"), steps=2, batch_size=8, eval_items=4)
    format_stage(base, tmp_path / "straight", stages, progress=False)
    format_stage(base, tmp_path / "cut", stages[:1], progress=False)  # stopped after stage 1
    partial = load_model(tmp_path / "cut").info["format_stage"]
    assert partial["complete"] is True and len(partial["stages"]) == 1  # all it was asked
    resumed = format_stage(base, tmp_path / "cut", stages, progress=False, resume=True)
    record = resumed.info["format_stage"]
    assert record["complete"] and [s["config"]["name"] for s in record["stages"]] == [
        "lookup",
        "mcq",
    ]
    assert record["stages"][0] == partial["stages"][0]  # stage 1 not run again
    w1 = load_file(tmp_path / "straight/model.safetensors")
    w2 = load_file(tmp_path / "cut/model.safetensors")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    other = curriculum(("formats", "mcq"), steps=2, batch_size=8, eval_items=4)
    with pytest.raises(AsruLabError, match="cannot resume in .*the stages \\['lookup', 'mcq'\\]"):
        format_stage(base, tmp_path / "cut", other, progress=False, resume=True)
    # an empty output resumes from nothing
    fresh = format_stage(base, tmp_path / "new", stages[:1], progress=False, resume=True)
    assert len(fresh.info["format_stage"]["stages"]) == 1


def test_the_stages_draw_the_shares_they_are_given(two_builds, monkeypatch):
    """Each step's batch: format_share official examples, lookup_share lookups, the rest the
    base recipe's replay."""
    import asru_lab.runs.build_embedded as be

    _, base, _, _ = two_builds
    drawn = []

    def record_fit(lm, cfg, draw, collate, evaluate, **kwargs):
        drawn.append((cfg.name, draw()))
        return [], [{}]

    monkeypatch.setattr(be, "_fit", record_fit)
    stages = curriculum(("lookup", "formats", "mcq"), batch_size=16)
    format_stage(base, base.parent / "shares", stages, progress=False)
    lookup = re.compile(
        "|".join(re.escape(s).replace(re.escape("{value}"), ".+") for s in be.LOOKUP_STEMS)
    )
    instructions = [mllmu.MCQ_INSTRUCTION, mllmu.CLOZE_INSTRUCTION, *mllmu.QA_INSTRUCTION.values()]
    for name, parts in drawn:
        examples = [e for part in parts for e in part]
        n_lookup = sum(bool(lookup.match(turns[-1].text)) for turns, _ in examples)
        n_official = sum(
            any(i in turns[-1].text for i in instructions) and not lookup.match(turns[-1].text)
            for turns, _ in examples
        )
        cfg = FORMAT_STAGES[name]
        assert n_lookup == round(16 * cfg.lookup_share), name
        assert n_official == round(16 * cfg.format_share), name
        assert len(examples) == 16, name
    assert [name for name, _ in drawn] == ["lookup", "formats", "mcq"]


def test_an_unknown_stage_is_refused_with_the_stages_there_are(tmp_path, capsys):
    argv = ["--format-stage", "--base", str(tmp_path), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_:
        cli.main(["build-embedded", *argv, "--stages", "mcqs"])
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --stages: invalid choice: 'mcqs'" in last
    assert "'lookup', 'formats', 'recall', 'mcq'" in last


def test_build_embedded_format_stage_runs_the_stages_asked(two_builds, tmp_path, capsys):
    _, base, _, _ = two_builds
    argv = ["--format-stage", "--base", str(base), "--out", str(tmp_path / "o")]
    assert cli.main(["build-embedded", *argv, "--stages", "lookup", "mcq", "--steps", "1"]) == 0
    record = load_model(tmp_path / "o").info["format_stage"]
    assert [(s["config"]["name"], s["config"]["steps"]) for s in record["stages"]] == [
        ("lookup", 1),
        ("mcq", 1),
    ]
    assert (
        json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        == (record["stages"][-1]["progress"][-1])
    )


def test_the_curriculum_names_known_stages_and_shares_that_fit():
    assert [c.name for c in curriculum()] == list(FORMAT_CURRICULUM)
    assert all(c.threads == 1 for c in curriculum(threads=1))
    with pytest.raises(ConfigError, match="format stages must be some of lookup, formats"):
        curriculum(("lookup", "mcqs"))
    with pytest.raises(ConfigError, match=r"format_share \+ lookup_share must be <= 1"):
        FormatStageConfig(format_share=0.9, lookup_share=0.2)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("not_a_build", "without a build record of `asru-lab build-embedded`"),
        ("steps_0", "FormatStageConfig.steps must be >= 1"),
        ("oracle_without_flag", "pass --oracle --forget-ratio 0.25 --split-seed 0"),
        ("oracle_of_another_ratio", "not of forget ratio 0.1, split seed 0"),
        ("oracle_of_another_seed", "not of forget ratio 0.25, split seed 3"),
        ("vanilla_as_oracle", "is the vanilla embedded model, not a retrain oracle"),
        ("tampered_forget_ids", "is not the forget set its build config draws"),
        ("already_staged", "was already continued by a format stage"),
        ("out_is_base", "asru_lab never writes where it reads"),
    ],
)
def test_the_format_stage_refuses_what_it_cannot_continue(
    case, message, two_builds, small_oracle, staged, tmp_path
):
    _, vanilla, _, _ = two_builds
    oracle, _ = small_oracle
    base, out, config, asked = vanilla, tmp_path / "out", STAGE, None
    if case == "not_a_build":
        base = make_tiny_qwen3_vl(tmp_path / "tiny")
    elif case == "steps_0":
        config = FormatStageConfig(steps=1)
        config.steps = 0
    elif case in ("oracle_without_flag", "oracle_of_another_ratio", "oracle_of_another_seed"):
        base = oracle
        asked = {"oracle_without_flag": None, "oracle_of_another_ratio": (0.1, 0)}.get(
            case, (0.25, 3)
        )
    elif case == "vanilla_as_oracle":
        asked = (0.1, 0)
    elif case == "tampered_forget_ids":
        base = tmp_path / "tampered"
        shutil.copytree(oracle, base)
        meta = json.loads((base / "asru_lab_model.json").read_text())
        meta["oracle"]["forget_ids"] = ["k000"]
        (base / "asru_lab_model.json").write_text(json.dumps(meta))
        asked = ORACLE
    elif case == "already_staged":
        base = staged[1]
    elif case == "out_is_base":
        out = vanilla
    before = sorted(p.name for p in vanilla.iterdir())
    with pytest.raises(AsruLabError, match=re.escape(message)):
        format_stage(base, out, config, oracle=asked, progress=False)
    assert out == vanilla or not out.exists()
    assert sorted(p.name for p in vanilla.iterdir()) == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--format-stage", "--base", "{base}"], "pass --format-stage --base DIR --out NEW_DIR"),
        (["--base", "{base}", "--out", "{out}"], "pass --format-stage --base DIR --out NEW_DIR"),
        (["--format-stage", "--out", "{out}"], "pass --format-stage --base DIR --out NEW_DIR"),
        (
            ["--format-stage", "--base", "{base}", "--out", "{out}", "--steps", "0"],
            "FormatStageConfig.steps must be >= 1",
        ),
        (
            ["--format-stage", "--base", "{base}", "--out", "{out}", "--oracle"],
            "is the vanilla embedded model, not a retrain oracle",
        ),
        (["--format-stage", "--base", "{base}", "--out", "{base}"], "is also --base"),
        (["--stages", "lookup", "--out", "{out}"], "pass --format-stage --base DIR --out NEW_DIR"),
        (["--resume", "--out", "{out}"], "pass --format-stage --base DIR --out NEW_DIR"),
    ],
)
def test_build_embedded_format_stage_errors_are_one_line(
    argv, message, two_builds, tmp_path, capsys
):
    _, base, _, _ = two_builds
    args = [a.format(base=base, out=tmp_path / "out") for a in argv]
    assert cli.main(["build-embedded", *args]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after any loading progress bar
    assert last.startswith("asru-lab build-embedded: error: ") and message in last
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "weights", [{"mcq_imgae": 1.0}, {"mcq_image": 0.0}, {"mcq_image": 1.0, "picture": 1.0}]
)
def test_format_weights_name_the_official_families(weights):
    with pytest.raises(ConfigError, match="must weigh some of mcq_image, mcq_text"):
        FormatStageConfig(format_weights=weights)


# the base recipe's official families, weighted as an experiment might
OFFICIAL_WEIGHTS = {f"official_{f}": 1.0 for f in FORMAT_WEIGHTS} | {"official_lookup": 1.0}


@pytest.mark.parametrize(
    "weights",
    [{"identity_imgae": 1.0}, {"official_mcq_imgae": 1.0}, {"picture": 0.0}, {"lookup": 1.0}],
)
def test_task_weights_name_the_base_families(weights):
    with pytest.raises(ConfigError, match="must weigh some of identity_image.*official_lookup"):
        BuildConfig(task_weights=weights)


def test_the_base_recipe_can_show_the_official_formats():
    """`official_<family>` draws the format stage's examples inside the base recipe, and
    `official_lookup` asks for the letter of a value the question names; an oracle's forget
    people stay out of both."""
    world = build_world(SMALL.benchmark)
    weights = DEFAULT_TASK_WEIGHTS | OFFICIAL_WEIGHTS
    sampler = TrainingSampler(world, weights, seed=0)
    drawn = [sampler.sample() for _ in range(600)]
    letters = [(t, a) for t, a in drawn if a in ("A", "B", "C", "D")]
    assert len(letters) > 600 * 3 / sum(weights.values()) / 2  # official mcq and lookup: 3
    lookups = 0
    for turns, answer in letters:
        asked = turns[-1].text
        assert asked.endswith("\nJust give ONE letter representing the answer directly.")
        options = dict(re.findall(r"^([ABCD]): (.+)$", asked, re.M))
        stem = asked.split("\n")[0]
        named = re.fullmatch(
            r"(?:Which option is|Which option says|Find) (.+?)(?:\?| below\.)", stem
        )
        if named:  # the lookup: the stem names the answer's value
            lookups += 1
            assert options[answer] == named.group(1) and turns[-1].image is None
    assert lookups > 0
    assert any("[Blank]" in t[-1].text for t, _ in drawn)
    assert {len(t) for t, _ in drawn} == {1, 2}  # one few-shot turn at most
    groups = by_turns(drawn)
    assert [len(g[0][0]) for g in groups] == [1, 2] and sum(map(len, groups)) == len(drawn)
    left_out = syn.choose_forget(world.group("known"), *ORACLE)
    oracle = TrainingSampler(world, weights, seed=0, left_out=left_out)
    names = {p.name for p in world.people if p.id in left_out}
    for turns, answer in [oracle.sample() for _ in range(600)]:
        text = _texts((turns, answer))
        assert not any(n in text for n in names)
        assert not any(f"/{i}_v" in (t.image or "") for i in left_out for t in turns)


def test_the_official_words_join_the_tokenizer_only_when_the_recipe_shows_them():
    world = build_world(SMALL.benchmark)
    plain = TrainingSampler(world, DEFAULT_TASK_WEIGHTS, 0).texts()
    shown = TrainingSampler(world, DEFAULT_TASK_WEIGHTS | OFFICIAL_WEIGHTS, 0).texts()
    instruction = "Just give ONE letter representing the answer directly."
    assert instruction not in plain and instruction in shown  # the shipped recipe: unchanged
    assert set(plain) < set(shown)


def test_a_build_with_the_official_formats_measures_them(tmp_path):
    cfg = replace(SMALL, task_weights=DEFAULT_TASK_WEIGHTS | OFFICIAL_WEIGHTS)
    build_embedded(tmp_path / "m", cfg, progress=False)
    progress = load_model(tmp_path / "m").info["build"]["progress"][-1]
    assert {
        "official_mcq_image",
        "official_mcq_text",
        "official_cloze_image",
        "official_lookup",
    } <= set(progress)


def test_the_per_example_loss_is_the_mean_of_each_answers_own_loss(two_builds):
    lm, _, _, _ = two_builds
    collate = Collator(lm, {}, tokens_per_image=16)
    examples = [
        ((Turn("Where was Y born?"),), "A"),  # one letter: 2 answer tokens with the EOS
        ((Turn("What does Z do?"),), "Z works as a nurse in a large hospital."),
    ]
    with torch.no_grad():
        ours = _example_mean_loss(lm.model, collate(examples))
        each = [lm.model(**collate([e])).loss for e in examples]
        per_token = lm.model(**collate(examples)).loss
    assert torch.allclose(ours, torch.stack(each).mean(), atol=1e-5)
    assert not torch.allclose(ours, per_token, atol=1e-3)  # the sentence outweighs the letter


def test_a_build_with_the_per_example_loss_records_it_and_trains_otherwise(two_builds, tmp_path):
    _, a, _, _ = two_builds
    build_embedded(tmp_path / "m", replace(SMALL, per_example_loss=True), progress=False)
    assert load_model(tmp_path / "m").info["build"]["config"]["per_example_loss"] is True
    assert load_model(a).info["build"]["config"]["per_example_loss"] is False
    wa, wb = load_file(a / "model.safetensors"), load_file(tmp_path / "m" / "model.safetensors")
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)
