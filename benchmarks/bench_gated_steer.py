"""What the null-space projection buys: retain answers changed by `gated_steer` vs `steer_only`,
and what it costs in forgetting.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/bench_gated_steer.py [--probe DIR]

The probe is `--probe DIR` or the default `al.locate(model, bench)` (minutes; the committed
`figures/causal/probe` is that probe). Both methods run on it with their default configs
(`gated_steer` reads 512 retain prompts). Evaluation items, fixed by `--seed`: `--n-items`
retain generation questions (image and text-only, spread over people, none of them among the
prompts gated_steer read) and as many forget ones. Greedy answers, 24 new tokens, without
steering and under each method's probe, gated (as the methods ship) and ungated (every prompt
steered: where the projection shows when the gate seldom fires on retain prompts). Per run:

- retain changed: share of retain answers that differ from the unsteered answer;
- retain recall: share of retain answers that contain the fact value;
- forget leak: share of forget answers that contain the fact value (`contains_value`);
- forget refusal / degenerate: the closed-world judge's share of refusals / gibberish.

Ungated, steer_only also runs at weaker strengths (`FRONTIER`, shares of the probe's alpha): a
projected direction that forgets less would change fewer retain answers for that reason alone.

Headline: retain changed, gated_steer / steer_only, gated and ungated (lower is better; with
no retain answer changed by either the ratio is not defined and printed as "n/a"), and
ungated at matched forgetting: against the steer_only strength that changes the fewest retain
answers while leaking no more than gated_steer.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace

import torch

import asru_lab as al
from asru_lab.baselines import unlearn
from asru_lab.baselines.gated_steer import GatedSteerConfig, retain_sample
from asru_lab.data.schema import contains_value, stratified_sample
from asru_lab.directions import REFUSALS
from asru_lab.evaluation.judge import ClosedWorldJudge

MAX_NEW_TOKENS = 24
COLUMNS = ("retain_changed", "retain_recall", "forget_leak", "forget_refusal")
FRONTIER = (0.25, 0.375, 0.5, 0.625, 0.75)  # shares of the probe's alpha


def answers(lm, bench, items, probe=None, gated=None) -> list[str]:
    """Greedy answers of `items`, under `probe` (with `gated` overriding its gate) if given."""
    images = [bench.load_image(i.image) if i.image else None for i in items]
    questions = [i.question for i in items]
    if probe is None:
        return al.generate(lm, images, questions, max_new_tokens=MAX_NEW_TOKENS, progress=False)
    with probe.apply(lm, gated=gated):
        return al.generate(lm, images, questions, max_new_tokens=MAX_NEW_TOKENS, progress=False)


def scores(judge, retain, forget, base, got) -> dict:
    """The run's shares (see the module docstring) from its answers `got` and the unsteered
    `base` ones, each a dict "retain"/"forget" -> answers."""
    verdicts = judge.judge(forget, got["forget"])
    n_r, n_f = len(retain), len(forget)
    pairs = zip(got["retain"], base["retain"], strict=True)
    return {
        "retain_changed": sum(a != b for a, b in pairs) / n_r,
        "retain_recall": sum(
            contains_value(a, i.value) for i, a in zip(retain, got["retain"], strict=True)
        )
        / n_r,
        "forget_leak": sum(
            contains_value(a, i.value) for i, a in zip(forget, got["forget"], strict=True)
        )
        / n_f,
        "forget_refusal": sum(v.category in REFUSALS for v in verdicts) / n_f,
        "forget_degenerate": sum(v.category == "degenerate" for v in verdicts) / n_f,
    }


def ratio(a: float, b: float) -> str:
    return "n/a" if b == 0 else f"{a / b:.3f}"


def main(probe_dir: str | None, n_items: int, seed: int, config: GatedSteerConfig) -> dict:
    lm, bench = al.load_model(), al.load_benchmark()
    started = time.time()
    probe = (
        al.load_probe(probe_dir)
        if probe_dir
        else al.locate(lm, bench, al.LocateConfig(progress=False))
    )
    located = time.time() - started
    print(f"probe: {probe} ({'loaded' if probe_dir else f'located in {located:.0f} s'})")

    steer_only = unlearn(lm, bench, "steer_only", probe=probe).probe
    result = unlearn(lm, bench, "gated_steer", config, probe=probe)
    null_space = result.record["null_space"]
    rms = null_space["retain_rms_along_direction"]
    print(
        f"gated_steer: rank {null_space['rank']} of {null_space['hidden_size']} "
        f"({null_space['energy_kept']:.1%} of the retain second moment, "
        f"{null_space['rows']} rows), cos(v, v') {null_space['cosine']:.3f}, removed "
        f"|v_r| {null_space['removed_norm']:.1f} of |v| {float(probe.direction.norm()):.1f}, "
        f"retain RMS along the direction {rms['before']:.1f} -> {rms['after']:.1f}, "
        f"{result.record['seconds']:.0f} s"
    )

    rng = random.Random(seed)
    read = {(i.image, i.question) for i in retain_sample(bench, config)}
    retain_pool = [i for i in bench.questions("retain", "qa") if (i.image, i.question) not in read]
    retain = stratified_sample(retain_pool, n_items, rng)
    forget = stratified_sample(bench.questions("forget", "qa"), n_items, rng)
    print(
        f"items: {len(retain)} retain ({sum(i.image is None for i in retain)} text-only), "
        f"{len(forget)} forget ({sum(i.image is None for i in forget)} text-only)"
    )

    judge = ClosedWorldJudge(bench)
    base = {"retain": answers(lm, bench, retain), "forget": answers(lm, bench, forget)}

    def run(p, gated: bool) -> dict:
        got = {
            "retain": answers(lm, bench, retain, p, gated),
            "forget": answers(lm, bench, forget, p, gated),
        }
        return scores(judge, retain, forget, base, got)

    rows = {"unsteered": scores(judge, retain, forget, base, base)}
    for gated in (True, False):
        for name, p in (("steer_only", steer_only), ("gated_steer", result.probe)):
            rows[f"{name} {'gated' if gated else 'ungated'}"] = run(p, gated)
    # steer_only with weaker pushes: is the projection better than steering less?
    for share in FRONTIER:
        alpha = share * probe.alpha
        rows[f"steer_only ungated a={alpha:g}"] = run(replace(steer_only, alpha=alpha), False)

    columns = (*COLUMNS, "forget_degenerate")
    print(f"\n{'run':<28}" + "".join(f"{c:>18}" for c in columns))
    for name, row in rows.items():
        print(f"{name:<28}" + "".join(f"{row[c]:>18.3f}" for c in columns))
    print()
    for gated in ("gated", "ungated"):
        a, b = rows[f"gated_steer {gated}"], rows[f"steer_only {gated}"]
        print(
            f"retain changed, gated_steer / steer_only ({gated}): "
            f"{a['retain_changed']:.3f} / {b['retain_changed']:.3f} = "
            f"{ratio(a['retain_changed'], b['retain_changed'])}; forget leak "
            f"{a['forget_leak']:.3f} vs {b['forget_leak']:.3f}"
        )
    ours = rows["gated_steer ungated"]
    matched = [
        (name, row)
        for name, row in rows.items()
        if name.startswith("steer_only ungated") and row["forget_leak"] <= ours["forget_leak"]
    ]
    if matched:
        name, row = min(matched, key=lambda kv: kv[1]["retain_changed"])
        print(
            f"at matched forgetting (leak <= {ours['forget_leak']:.3f}), ungated: gated_steer "
            f"{ours['retain_changed']:.3f} / {name} {row['retain_changed']:.3f} = "
            f"{ratio(ours['retain_changed'], row['retain_changed'])}"
        )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probe", default=None, help="probe dir (default: al.locate anew)")
    parser.add_argument("--n-items", type=int, default=64, help="retain and forget items each")
    parser.add_argument("--seed", type=int, default=0, help="seeds the evaluation items")
    parser.add_argument("--energy", type=float, default=GatedSteerConfig.energy)
    parser.add_argument(
        "--no-keep-norm", action="store_true", help="steer with the projected direction as is"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gated_steer = GatedSteerConfig(
        energy=args.energy, keep_norm=not args.no_keep_norm, progress=False
    )
    main(args.probe, args.n_items, args.seed, gated_steer)
