# GPU LLM machine deployer. `make help` lists the targets.
SHELL := /bin/bash
PY ?= .venv/bin/python
BEHAVE ?= .venv/bin/behave
TARGET ?= lab
CATALOG ?=
BEHAVE_D := -D target=$(TARGET) $(if $(CATALOG),-D catalog=$(CATALOG))

.PHONY: help venv lint test unit plan deploy-vm-llm-aimachine destroy-vm-llm-aimachine verify report lab-image lab-up lab-down

help:
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

venv: .venv/.installed ## create .venv with the pinned requirements
.venv/.installed: requirements.txt
	python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -r requirements.txt
	touch $@

lint: venv ## yamllint + catalog validation
	.venv/bin/yamllint -c .yamllint infrastructure-catalog.yml lab/ .
	$(PY) -m provisioners validate infrastructure-catalog.yml

unit: venv ## unit tests only (no lab VM)
	$(PY) -m pytest tests/unit -q

test: venv ## everything CI runs: lint, unit + lab tests, behave on the lab
	$(PY) -m pytest -q
