# The two commands of the README:
#   make train   installs what is needed, then runs the main job on the default data.
#   make test    installs what is needed, then runs the test suite.
PYTHON ?= python3

.PHONY: setup train test lint

setup:
	bash scripts/setup.sh

train: setup
	$(PYTHON) -m mln_tf train

test: setup
	$(PYTHON) -m ruff check mln_tf tests benchmarks
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check mln_tf tests benchmarks
