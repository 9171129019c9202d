# Both targets create .venv when it is absent and install what is missing (`test` also the
# system packages its browser and PostgreSQL tests drive: scripts/system_packages.sh).
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: demo test test-scale clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-main: pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed-main

demo: $(VENV)/.installed-main
	$(BIN)/arch-compare demo --out runs/demo

test: $(VENV)/.installed-test
	bash scripts/system_packages.sh
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not scale"

# The multi-device and multi-process equivalence tests (simulated CPU devices, several processes
# on loopback), kill-and-resume in subprocesses and the rating app under load: minutes of
# compiling and waiting, so apart from `make test`; CI runs both.
test-scale: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m scale

clean:
	rm -rf $(VENV)
