#!/usr/bin/env bash
# The test command (README, .ci/run): the model tests run in the worker environment, everything
# else in the orchestrator environment. Prints both pytest summaries and one combined line, and
# fails when either run fails, when ruff, mypy or lint-imports finds a problem, or when no test ran at all
# (pytest exit code 5 is a failure here).
set -u
cd "$(dirname "$0")/.."
results=.test-results
rm -rf "$results" && mkdir -p "$results"

# Lint first (pyproject.toml [tool.ruff]): a finding fails the command, after the tests have run.
.venv/bin/ruff check rs_embed_pipeline rs_embed_pipeline_tests benchmarks scripts
lint_rc=$?
# Types (pyproject.toml [tool.mypy]: its `files` are the checked scope); same rule as ruff.
.venv/bin/mypy
types_rc=$?
# Import contracts (pyproject.toml [tool.importlinter]: the layers of docs/architecture.md).
.venv/bin/lint-imports --no-cache
contracts_rc=$?

.venv-worker/bin/python -m pytest rs_embed_pipeline_tests/models -m "not live_gee" \
    --junitxml="$results/worker.xml" "$@"
worker_rc=$?
.venv/bin/python -m pytest rs_embed_pipeline_tests --ignore=rs_embed_pipeline_tests/models \
    -m "not live_gee" --junitxml="$results/orchestrator.xml" "$@"
orchestrator_rc=$?

.venv/bin/python scripts/test_summary.py "$results/worker.xml" "$results/orchestrator.xml"
summary_rc=$?
if [ "$lint_rc" -ne 0 ]; then
    echo "ruff found problems (see above)"; exit 1
fi
if [ "$types_rc" -ne 0 ]; then
    echo "mypy found problems (see above)"; exit 1
fi
if [ "$contracts_rc" -ne 0 ]; then
    echo "lint-imports found a broken import contract (see above)"; exit 1
fi
for rc in $worker_rc $orchestrator_rc; do
    if [ "$rc" -ne 0 ]; then
        echo "pytest exited with $rc (5 means no tests ran)"; exit 1
    fi
done
exit $summary_rc
