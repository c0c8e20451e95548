# gemma-airgap: every target installs what it needs and is fast when already done.
#   make lab   the whole prepare -> air gap -> deploy -> verify flow on this machine
#   make test  lint + unit + the end-to-end air-gap scenario + the role scenarios

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Caches live outside the git tree (debootstrap root filesystems, built wheels).
export LAB_CACHE ?= /var/cache/gemma-airgap
export LAB_TARGETS ?= 1
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(CURDIR)/$(BIN):$(PATH)

STAMP := $(VENV)/.installed
LLAMA_CPP_VERSION := 0.3.36
WHEELS := $(LAB_CACHE)/wheels
LLAMA_WHEEL := $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-py3-none-linux_x86_64.whl

.PHONY: help setup lint sanity rules unit lab-up lab-down lab-status lab lab-check standin vision prepare deploy verify rollback \
	molecule lab-tests e2e site test \
	bench clean

help:
	@echo "make lab    - lab-up, then prepare -> deploy -> verify in the air-gap lab"
	@echo "make test   - lint, unit tests, molecule scenarios, end-to-end air-gap scenario"
	@echo "make setup | lint | unit | lab-up | lab-down | lab-status | standin | vision | molecule | e2e | site"
	@echo "make bench  - benchmarks (figures side by side with a baseline from the same run)"

# llama-cpp-python has no wheel on PyPI: build it once, portable across CPUs
# (GGML_NATIVE=OFF), into the cache outside the tree. The venv and the stand-in
# image both install from it.
$(LLAMA_WHEEL):
	mkdir -p $(WHEELS)
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(PYTHON) -m pip wheel --quiet --no-deps \
	  --disable-pip-version-check -w $(WHEELS) llama-cpp-python==$(LLAMA_CPP_VERSION)

# The venv is rebuilt only when a requirements file changes.
$(STAMP): requirements.txt requirements-staging.txt requirements-dev.txt $(LLAMA_WHEEL)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
	  --find-links $(WHEELS) -r requirements-dev.txt
	touch $@

setup: $(STAMP)

lint: setup
	$(BIN)/yamllint --strict .
	$(BIN)/ruff check .
	$(BIN)/ansible-lint --profile production
	@# Every module's documentation must be readable by ansible-doc (operators read it offline).
	for module in plugins/modules/*.py; do \
	  ANSIBLE_CONFIG=ansible.cfg $(BIN)/ansible-doc -t module "gemma_airgap.ollama.$$(basename $$module .py)" \
	    >/dev/null || exit 1; \
	done
	$(MAKE) sanity
	$(MAKE) rules
	@# The operator's docs against the code: commands, variables, links, a troubleshooting
	@# entry per failure, a runbook entry per alert, the Korean README's commands.
	$(BIN)/pytest -q tests/docs

# The Prometheus rules as Prometheus reads them (promtool check rules) and their unit tests
# (promtool test rules: every alert fires when it should and stays silent when it should not).
# promtool comes from Debian's package, unpacked into the cache (no service installed).
MONITORING_FILES := roles/monitoring/files
rules: setup
	tools=$$($(BIN)/python lab/labctl.py prometheus-tools | tail -1); \
	  $$tools/promtool check rules $(MONITORING_FILES)/prometheus/rules/*.yml && \
	  cd tests/prometheus && $$tools/promtool test rules *.test.yml

# ansible-test sanity on the collection exactly as prepare builds it into the bundle
# (roles/bundle/files/collection_artifacts.py),
# installed offline into a scratch tree. ansible-test bootstraps pip in each sanity venv
# with a script from ci-files.testing.ansible.com, which is unreachable: tests/sanity/get_pip.py
# does the same from PyPI's pip wheel (ANSIBLE_TEST_PIP: the pip ansible-test 2.19 pins).
ANSIBLE_TEST_PIP := 24.2
ANSIBLE_TEST_CACHE := $(HOME)/.ansible/test/cache
# Outside the git tree (ansible-test lists only a repository's tracked files), one per checkout.
SANITY_DIR := $(LAB_CACHE)/sanity-$(shell echo $(CURDIR) | sha256sum | cut -c1-12)
sanity: setup
	rm -rf $(SANITY_DIR) && mkdir -p $(SANITY_DIR)
	$(BIN)/python roles/bundle/files/collection_artifacts.py --project . \
	  --requirements collections/requirements.yml --dest $(SANITY_DIR) >/dev/null
	$(BIN)/ansible-galaxy collection install --offline --no-deps --force -p $(SANITY_DIR) \
	  $(SANITY_DIR)/gemma_airgap-ollama-*.tar.gz
	mkdir -p $(ANSIBLE_TEST_CACHE) $(SANITY_DIR)/ansible_collections/gemma_airgap/ollama/tests/sanity
	cp tests/sanity/get_pip.py $(ANSIBLE_TEST_CACHE)/get_pip_$(subst .,_,$(ANSIBLE_TEST_PIP)).py
	test -f $(ANSIBLE_TEST_CACHE)/pip-$(ANSIBLE_TEST_PIP)-py3-none-any.whl || \
	  $(BIN)/python -m pip download --quiet --no-deps -d $(ANSIBLE_TEST_CACHE) pip==$(ANSIBLE_TEST_PIP)
	cp tests/sanity/ignore-*.txt $(SANITY_DIR)/ansible_collections/gemma_airgap/ollama/tests/sanity/
	cd $(SANITY_DIR)/ansible_collections/gemma_airgap/ollama && \
	  $(CURDIR)/$(BIN)/ansible-test sanity --python 3.11 >$(SANITY_DIR)/sanity.log 2>&1 || \
	  { grep -E '^(ERROR|FATAL)' $(SANITY_DIR)/sanity.log; exit 1; }
	grep -c '^Running sanity test' $(SANITY_DIR)/sanity.log | xargs printf 'ansible-test sanity: %s tests passed\n'

# The stand-in's Go front first (gofmt, go vet, go test; built from Debian's Go packages).
unit: setup
	$(BIN)/python lab/labctl.py front-check
	@# Two workers (pytest-xdist), each taking whole files: module fixtures start once.
	$(BIN)/pytest -n 2 --dist loadfile -m 'not lab and not e2e and not site' --ignore=tests/docs tests

lab-up: setup
	$(BIN)/python lab/labctl.py up

lab-down: setup
	$(BIN)/python lab/labctl.py down

# The Ollama stand-in image (lab equipment), built offline from the lab base.
standin: setup
	$(BIN)/python lab/labctl.py standin

# The lab's vision backend image (llama-cpp-python's server; production: llama-server).
vision: setup
	$(BIN)/python lab/labctl.py vision

lab-status: setup
	$(BIN)/python lab/labctl.py status

# What `make lab` proves once the lab is up: every target answers Ansible, and
# no target can reach the internet while the staging side can.
lab-check: setup
	$(BIN)/ansible-playbook lab/check.yml

# prepare.yml against the lab inventory: the bundle goes to /var/lib/gemma-airgap/bundles/lab-1.
prepare: setup
	$(BIN)/python lab/labctl.py standin
	$(BIN)/python lab/labctl.py vision
	$(BIN)/python lab/labctl.py prometheus
	$(BIN)/python lab/labctl.py model
	$(BIN)/python lab/labctl.py signing-key
	$(BIN)/ansible-playbook playbooks/prepare.yml

# deploy.yml against the lab's internal-network targets, then verify.yml.
deploy: setup
	$(BIN)/ansible-playbook playbooks/deploy.yml

verify: setup
	$(BIN)/ansible-playbook playbooks/verify.yml

rollback: setup
	$(BIN)/ansible-playbook playbooks/rollback.yml

lab: lab-up prepare deploy lab-check verify

# Role scenarios (molecule/<role>/, each on one bare lab target of its own; shared
# plumbing in molecule/_shared/, which has no molecule.yml), each with its wall time.
# They take images, models and packages from the lab bundle (prepare.yml's, made here
# when missing). The end-to-end air-gap scenario runs in `make e2e`.
export LAB_BUNDLE ?= /var/lib/gemma-airgap/bundles/lab-1
molecule: setup
	test -f $(LAB_BUNDLE)/bundle.json || $(MAKE) prepare
	for scenario in $$(ls molecule/*/molecule.yml | cut -d/ -f2 | grep -vx airgap); do \
	  started=$$(date +%s); \
	  $(BIN)/molecule test -s $$scenario; \
	  echo "molecule $$scenario: passed in $$(( $$(date +%s) - started )) s"; done

# Lab tests need the engine and base images.
lab-tests: setup
	$(BIN)/python lab/labctl.py images
	$(BIN)/python lab/labctl.py signing-key
	$(BIN)/pytest -m lab --durations=12 tests/lab

# The end-to-end scenario: lab up -> prepare -> deploy -> again (0 changed) -> verify; the
# e2e suites run against that deployed lab before it is destroyed.
e2e: setup
	$(BIN)/python lab/labctl.py images
	$(BIN)/molecule destroy -s airgap  # a cold start: --destroy never also skips the first destroy
	$(BIN)/molecule test -s airgap --destroy never
	$(BIN)/pytest -m e2e --durations=12 tests/e2e
	$(BIN)/molecule destroy -s airgap

# A site of two inference hosts in a lab of its own (gemma-airgap-site, two targets), deployed
# from this machine with the lab bundle: the pool, the firewall, a crash under load, a rolling
# deploy of a new release under load. The lab goes at the end.
site: setup
	$(BIN)/python lab/labctl.py images
	test -f $(LAB_BUNDLE)/bundle.json || $(MAKE) prepare
	LAB_PREFIX=gemma-airgap-site LAB_TARGETS=2 $(BIN)/pytest -m site --durations=12 tests/site

# The lab bundle first (the role scenarios take images, models and packages from it; the
# air-gap scenario's own prepare then changes nothing; it also builds the lab's base images),
# then three stages side by side: the end-to-end suites, the two-host site, and the lab tests
# followed by the role scenarios. Separate labs (each its own prefix); lab/stages.py reports
# each stage's time and how busy the CPUs were meanwhile. They keep both CPUs 99 % busy, so a
# fourth stage beside them gains nothing (measured: the lab tests and the role scenarios as
# stages of their own finished no sooner, and the site's load test starved).
test: lint unit prepare
	$(BIN)/python lab/stages.py e2e='$(MAKE) --no-print-directory e2e' \
	  site='$(MAKE) --no-print-directory site' \
	  lab-and-roles='$(MAKE) --no-print-directory lab-tests molecule'

bench: setup
	$(BIN)/python benchmarks/bench_standin.py
	$(BIN)/python benchmarks/bench_bundle_manifest.py
	command -v nginx >/dev/null && command -v wrk >/dev/null || \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk
	$(BIN)/python benchmarks/bench_gateway.py
	$(BIN)/python benchmarks/bench_pool.py
	test -f $(LAB_BUNDLE)/bundle.json || $(MAKE) prepare
	$(BIN)/python benchmarks/bench_sync.py --bundle $(LAB_BUNDLE)
	$(BIN)/python benchmarks/bench_backup.py

clean: lab-down
	rm -rf $(VENV)
