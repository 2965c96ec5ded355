# The two commands of the README: `make demo` (the main job) and `make test`.
# Both run scripts/setup.sh first, which installs only what is missing.
.PHONY: setup demo test test-all vsix

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/csound-assistant pipeline

test: setup
	bash scripts/test.sh

test-all: setup
	bash scripts/test.sh -m "not gpu"

vsix: setup
	.venv/bin/csound-assistant editor vscode
