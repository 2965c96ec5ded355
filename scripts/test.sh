#!/usr/bin/env bash
# Run the test suite in .venv; extra arguments go to pytest. Exit status 5 (no tests collected,
# for example with a -k that matches nothing) is reported as a failure with a clear message.
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pytest "$@"
status=$?
if [[ $status -eq 5 ]]; then
  echo "test: pytest collected no tests (exit 5); treating as failure" >&2
  exit 1
fi
exit $status
