"""Whole runs that chain the stages: `demo` (the README's `make demo`), `pipeline` (every stage
on one model, resumable), `reproduce` (every method x forget ratio: the paper's tables and
figures) and `build_embedded` (the one-time build of the embedded model; never run in CI).
"""
