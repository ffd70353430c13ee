"""The audit's one-sentence verdict (`asru_lab.auditing.verdict`), read from its own numbers."""

from __future__ import annotations


def _union(leak, lo, hi, n=64):
    return {"union_leak": leak, "union_lo": lo, "union_hi": hi, "union_n": n,
            "recovered_leak": leak, "recovered_by": "prefill"}  # fmt: skip


def test_the_verdict_reads_the_union_against_the_oracles_interval():
    from asru_lab.auditing import verdict

    oracle = {"oracle_union": {"forget": {"leak": 0.09, "lo": 0.04, "hi": 0.19}}}
    hidden = verdict(_union(0.92, 0.83, 0.97), oracle, "ASRU")
    assert hidden.startswith("ASRU: hidden, not forgotten") and "0.92 [0.83, 0.97] of 64" in hidden
    assert "0.09 [0.04, 0.19]" in hidden and "prefill (0.92)" in hidden
    assert "not told apart from forgotten" in verdict(_union(0.12, 0.06, 0.22), oracle)
    close = verdict(_union(0.25, 0.15, 0.38), oracle)  # overlapping, 0.16 above
    assert "too close to call" in close
    assert "cannot tell" in verdict(_union(0.5, 0.3, 0.7), {})
    assert "no verdict" in verdict({}, oracle)
    # four questions each: wide intervals that overlap read as too close, not as forgotten
    small = {"oracle_union": {"forget": {"leak": 0.0, "lo": 0.0, "hi": 0.49}}}
    assert "too close to call" in verdict(_union(0.25, 0.05, 0.7, n=4), small)
