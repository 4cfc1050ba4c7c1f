# Two commands on a fresh machine:  make quickstart   and   make test
SHELL := /bin/bash
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# Faster CPU training steps: keep freed logits-sized buffers instead of unmapping them (see README).
export GLIBC_TUNABLES ?= glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736
PYTEST_ARGS ?=

.PHONY: setup quickstart test test-fast lint bench

setup:
	bash scripts/setup.sh

quickstart: setup
	.venv/bin/meditune run

test: setup
	.venv/bin/python -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: setup
	.venv/bin/ruff check src tests bench
