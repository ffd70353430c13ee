"""Share of a GRPO step spent in the reward functions (stage 2).

    nice -n 10 .venv/bin/python benchmarks/bench_rewards.py [--steps 20] [--rewards contextual]

Runs `reinforce` for `--steps` GRPO steps on the embedded model (default settings: 8 rollouts,
16 completions per step, forget + boundary prompts) with every reward function wrapped in a
timer, and prints the rewards' total time / the training loop's time. Bound: <= 0.05.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import asru_lab as al
import asru_lab.stages.reinforce as stage2
from asru_lab.rewards import build_rewards

BOUND = 0.05


def main(steps: int, rewards: tuple[str, ...]) -> float:
    lm = al.load_model()
    bench = al.load_benchmark()
    spent = {"rewards": 0.0, "calls": 0}

    def timed_rewards(names, bench):
        functions = []
        for function in build_rewards(names, bench):

            def timed(*args, _f=function, **kwargs):
                start = time.perf_counter()
                try:
                    return _f(*args, **kwargs)
                finally:
                    spent["rewards"] += time.perf_counter() - start
                    spent["calls"] += 1

            timed.__name__ = function.__name__
            functions.append(timed)
        return functions

    stage2.build_rewards = timed_rewards
    config = stage2.ReinforceConfig(
        rewards=rewards, max_steps=steps, probe_every=0, boundary="random", progress=False
    )
    with tempfile.TemporaryDirectory() as out:
        _, record = stage2.reinforce(lm, bench, config, output_dir=out)
    train = next(r["train_runtime"] for r in record["log_history"] if "train_runtime" in r)
    share = spent["rewards"] / train
    print(
        f"{record['steps']} GRPO steps in {train:.1f} s; {spent['calls']} reward calls took "
        f"{spent['rewards']:.3f} s"
    )
    verdict = "ok" if share <= BOUND else "MISSED"
    print(f"ratio rewards/step: {share:.4f} (bound <= {BOUND}: {verdict})")
    return share


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rewards", nargs="+", default=["contextual"])
    args = parser.parse_args()
    main(args.steps, tuple(args.rewards))
