"""The benchmark scripts of docs/benchmarks.md, run as modules with the test harness on the
path, e.g. ``PYTHONPATH=.:tests python -m benchmarks.run`` from the repository root (``tox -e
bench`` runs that one against the installed package).  Checked by ruff and mypy like the code."""
