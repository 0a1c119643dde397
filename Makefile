# onestep: `make demo` runs the main job, `make test` runs the test suite, `make fashion` the
# Fashion-MNIST benchmark.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.onestep-installed
DEMO   ?= runs/demo
FASHION ?= runs/fashion
FASHION_LONG ?= runs/fashion-long

.PHONY: install demo fashion fashion-long test lint keys clean-demo

install: $(STAMP)

# Idempotent: re-runs only when pyproject.toml changes. torch and torchvision are
# installed first with exact pins so pip takes them from the local wheel store.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: install
	$(BIN)/python -m onestep demo --output $(DEMO)

# the Fashion-MNIST benchmark: finds the data set (data.root, $$ONESTEP_DATA, ~/.cache/onestep,
# Debian's dataset-fashion-mnist) or downloads it where there is network
fashion: install
	$(BIN)/python -m onestep demo --preset fashion --output $(FASHION) --download

# the same recipe at 1.5x the iterations (2,700): the budget at which its one-step student passes
# its teacher at evaluation seeds 0, 1 and 2 (docs/results.md, run P); about 55 minutes on the
# machine make fashion's 45 were sized on, 2 hours on a slower two-core machine
fashion-long: install
	$(BIN)/python -m onestep demo --preset fashion --output $(FASHION_LONG) --download --set train.steps=2700

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check onestep eval tests

# regenerate the config-key table of docs/configuration.md from the schema (tests/test_package.py checks it)
keys: install
	$(BIN)/python -m onestep.config.keys docs/configuration.md

clean-demo:
	rm -rf $(DEMO)
