# GPU LLM machine deployer. `make help` lists the targets.
# TARGET=lab (default: the embedded lab) or TARGET=proxmox (a real host; PROXMOX_* variables).
# CATALOG=PATH picks another catalog (default: lab/lab-catalog.yml for lab, infrastructure-catalog.yml for proxmox).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PY ?= .venv/bin/python
BEHAVE ?= .venv/bin/behave
FEATURE ?= features/vm_llm_gpu_passthrough.feature
TARGET ?= lab
ifeq ($(TARGET),lab)
CATALOG ?= lab/lab-catalog.yml
else
CATALOG ?= infrastructure-catalog.yml
endif
BEHAVE_ARGS ?=
ifeq ($(TARGET),lab)
# The lab is disposable: a deploy runs every scenario; its fakepve login is root@pam.
DEPLOY_TAGS ?= --tags='not @wip'
export PROXMOX_USER ?= root@pam
export PROXMOX_PASSWORD ?= $(or $(LAB_PVE_PASSWORD),lab-secret)
else
DEPLOY_TAGS ?= --tags='not @wip and not @destructive'
endif
BEHAVE_D = -D target=$(TARGET) -D catalog=$(CATALOG) $(if $(GPU_PROFILE),-D gpu_profile=$(GPU_PROFILE))

.PHONY: help host-deps venv lint unit test test-lab behave plan deploy-vm-llm-aimachine verify destroy-vm-llm-aimachine \
        report doctor lab-image lab-up lab-down lab-status

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-28s %s\n", $$1, $$2}'

host-deps: ## install missing host packages for the lab (apt; sudo when not root)
	bash lab/host-deps.sh

venv: .venv/.installed ## create .venv with the pinned requirements
.venv/.installed: requirements.txt
	python3 -m venv .venv || { rm -rf .venv; bash lab/host-deps.sh; python3 -m venv .venv; }
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -r requirements.txt
	touch $@

lint: venv ## yamllint + validate both catalogs
	.venv/bin/yamllint -c .yamllint .
	$(PY) -m provisioners validate --skip-file-checks infrastructure-catalog.yml
	$(PY) -m provisioners validate --skip-file-checks lab/lab-catalog.yml

unit: venv ## unit tests (no lab VM)
	$(PY) -m pytest -q -m "not lab" tests/unit

# Lab tests that need the lab without VM 140 (they create and destroy their own guest), and
# those that start from the converged VM a deploy leaves (they only re-converge or read).
LAB_TESTS_FRESH = tests/lab/test_artefacts_in_guest.py tests/lab/test_guest_boot.py
LAB_TESTS_CONVERGED = tests/lab/test_guest_stack_driver.py tests/lab/test_guest_stack_services.py \
                      tests/lab/test_guest_faults_ssh_cut.py tests/lab/test_verify_is_read_only.py

test-lab: venv lab-image ## tests that boot the lab guest VM
	$(PY) -m pytest -q -m lab $(LAB_TESTS_FRESH) $(LAB_TESTS_CONVERGED)

behave: venv $(if $(filter lab,$(TARGET)),lab-image) ## run the feature file (everything but @wip) on TARGET
	$(BEHAVE) $(BEHAVE_D) $(BEHAVE_ARGS) $(FEATURE)

# One lab for the whole run (a lab that stops forgets its VMs): fresh-guest lab tests, then every
# scenario (a real deploy from nothing), the report check, then the tests that reuse its VM.
test: venv lint lab-image ## what CI runs: lint, unit tests, lab tests, every scenario on the lab
	$(PY) -m pytest -q -m "not lab" tests/unit
	trap '$(PY) -m lab down >/dev/null 2>&1 || true' EXIT; \
	$(PY) -m lab up; \
	$(PY) -m pytest -q -m lab $(LAB_TESTS_FRESH); \
	$(BEHAVE) -D target=lab -D catalog=lab/lab-catalog.yml $(FEATURE); \
	DEPLOYER_CHECK_REPORT=$$(readlink -f reports/latest) $(PY) -m pytest -q tests/after_deploy; \
	$(PY) -m pytest -q -m lab $(LAB_TESTS_CONVERGED)

plan: venv ## show what a deploy would change on TARGET (changes nothing)
	$(PY) -m provisioners plan $(CATALOG)

deploy-vm-llm-aimachine: venv $(if $(filter lab,$(TARGET)),lab-image) ## deploy + verify vm-llm-aimachine on TARGET (proxmox: all but @destructive)
	$(BEHAVE) $(BEHAVE_D) $(DEPLOY_TAGS) $(BEHAVE_ARGS) $(FEATURE)

verify: venv $(if $(filter lab,$(TARGET)),lab-image) ## read-only @verify checks of the deployed VM on TARGET
	$(BEHAVE) $(BEHAVE_D) --tags='@verify and not @wip' $(BEHAVE_ARGS) $(FEATURE)

destroy-vm-llm-aimachine: venv ## destroy the VM (only if this tool created it); needs CONFIRM=yes
	@if [ "$(CONFIRM)" != "yes" ]; then echo "refusing: destroying VM needs CONFIRM=yes (make destroy-vm-llm-aimachine CONFIRM=yes)"; exit 2; fi
	$(PY) -m provisioners destroy --yes-destroy $(CATALOG)

report: ## print where the latest HTML/JSON/JUnit report is
	@$(PY) -m provisioners.report

doctor: venv ## diagnose captures: make doctor FROM=transcript.txt (or DIR=captures/)
	$(PY) -m provisioners doctor $(if $(FROM),--from $(FROM)) $(DIR)

lab-image: venv host-deps ## build (or reuse) the cached lab guest image
	$(PY) -m lab image

lab-up: venv ## start the embedded lab (fakepve + guest hypervisor + artefact server)
	$(PY) -m lab up

lab-down: ## stop the lab and its guest VM
	$(PY) -m lab down

lab-status: ## what the lab runs
	$(PY) -m lab status
