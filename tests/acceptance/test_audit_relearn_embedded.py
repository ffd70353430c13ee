"""The relearning attack's control on the embedded model at the default settings: every default
setting teaches the retrain oracle, which never saw the forget people, the taught half within the
default steps. So a flat held-out curve at these settings says the facts did not come back, not
that the attack never trained (the old single setting, LoRA at 5e-4 for 100 steps, taught the
oracle under half of it). About 1.5 minutes on 2 cores."""

from __future__ import annotations

import pytest

import asru_lab as al
from asru_lab.auditing import AuditConfig
from asru_lab.auditing.measure import leak_records, rate, sample
from asru_lab.auditing.relearn import CONTROL_LEAK, fine_tuned, halves, settings, teaching_data
from asru_lab.evaluation.harness import forget_people

pytestmark = pytest.mark.slow


def test_every_default_setting_teaches_the_oracle_the_taught_half(bench):
    oracle = al.load_oracle()
    config = AuditConfig(progress=False)
    taught, _ = halves(forget_people(bench), config.seed)
    items = teaching_data(bench, config, taught)["forget"]
    asked = sample(items, config.max_items, config.seed, "relearn:taught")
    retain = sample(bench.questions("retain", "qa"), config.max_items // 4, config.seed, "retain")
    last = config.relearn_steps[-1]
    for mode, lr in settings(config):
        for k, twin in fine_tuned(oracle, bench, items, mode, lr, config):
            if k == last:
                leak = rate(leak_records(twin, bench, asked, config, attack="control"))
                recall = rate(leak_records(twin, bench, retain, config, attack="retain"))
                assert leak >= CONTROL_LEAK, (mode, lr, leak)
                assert recall >= 0.5, (mode, lr, recall)  # taught, not broken
