# The two commands of the README:
#   make train   installs what is needed, then runs the main job on the default data.
#   make test    installs what is needed, then runs the test suite.
# Everything is installed into a project virtual environment, $(VENV), so that
# Debian's and Ubuntu's own Python (PEP 668, "externally managed") works too.
PYTHON ?= python3
VENV ?= .venv
VENV_PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
# Extra arguments: make train ARGS="--dataset digits", make test PYTEST_ARGS="-k tuner".
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup train test lint

setup: $(INSTALLED)

$(INSTALLED): requirements.txt pyproject.toml scripts/setup.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/setup.sh
	touch $@

train: setup
	$(VENV_PYTHON) -m mln_tf train $(ARGS)

test: setup
	$(VENV_PYTHON) -m ruff check mln_tf tests benchmarks
	$(VENV_PYTHON) -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(VENV_PYTHON) -m ruff check mln_tf tests benchmarks
