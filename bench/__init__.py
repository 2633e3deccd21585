"""pausesvc benchmarks: ``python -m bench`` (full) or ``python -m bench --quick`` (CI smoke).

Results go to ``bench/results/*.json``; ``docs/benchmarks.md`` and ``docs/img/bench-*.png`` are
regenerated from them. See ``docs/benchmarks.md`` for what each scenario measures.
"""
