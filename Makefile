# mesh-core. The two commands a new user needs:
#   make lab    build and provision the local lab mesh (NODES=10 TOPOLOGY=grid)
#   make test   lint, unit tests, molecule
# Every target installs what it needs first (`setup`, cached by content hash).
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV := .venv
BIN := $(VENV)/bin
NODES ?= 10
TOPOLOGY ?= grid
SEED ?= 1
IMAGE_TARGET ?= container-amd64
MOLECULE_SCENARIOS ?= base node_exporter prometheus grafana mesh_agent batman_adv spire
MOLECULE_FULL_SCENARIOS ?= etcd yggdrasil
HOST ?=
INVENTORY ?= inventories/example
DEVICE ?=
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
# Molecule instance and network names end in this, so two checkouts on one
# machine can run `make molecule` at the same time.
export MESHCORE_CHECKOUT_ID ?= $(shell printf %s "$(CURDIR)" | sha256sum | cut -c1-6)
# The content-addressed tag `make image` built for this checkout (read when each
# recipe runs, so after the image target): lab, molecule and bundle use it.
export MESHCORE_IMAGE = $(shell cat build/images/container-amd64.ref 2>/dev/null || echo localhost/meshcore-base:latest)
# molecule runs ansible-playbook and ansible-config from PATH: the venv's, never Debian's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_FORCE_COLOR ?= 1
export PY_COLORS ?= 1

.PHONY: help setup image image-rpi seed image-boot-test image-repro agent-bundle lab lab-status lab-report lab-destroy dashboard test test-full lint unit molecule molecule-full molecule-image bench fuzz

help:
	@echo "make lab [NODES=10] [TOPOLOGY=grid|rgg|ladder|community|FILE]   build + provision the lab mesh"
	@echo "make lab-status | lab-destroy                                  status table | remove the lab"
	@echo "make lab-report                                                key series + build/lab/report.png"
	@echo "make dashboard                                                 regenerate the Grafana dashboard JSON"
	@echo "make test        lint + unit tests + molecule (fast scenarios)"
	@echo "make test-full   make test + the slow scenarios"
	@echo "make bench       benchmarks under tests/bench (one JSON line per figure)"
	@echo "make fuzz [FUZZ_SECONDS=600]  coverage-guided fuzzing of the agent's advert handling (make test runs 20 s)"
	@echo "make image [IMAGE_TARGET=container-amd64|rpi-arm64]           build an image"
	@echo "make seed HOST=name [INVENTORY=inventories/example] [DEVICE=]  per-node first-boot seed into a copy of the rpi image (or a card)"
	@echo "make image-boot-test  boot the rpi-arm64 image under qemu-system-aarch64 (TCG) with a seed, check it"
	@echo "make image-repro      build rpi-arm64 twice from scratch with SOURCE_DATE_EPOCH, compare hashes"

setup:
	@bash scripts/setup.sh

image: setup
	$(BIN)/ansible-playbook playbooks/image.yml -e image_target=$(IMAGE_TARGET)

# The fleet's SD-card image (arm64, through qemu-user); stages cached by input hash.
image-rpi: setup
	@start=$$(date +%s); \
	$(BIN)/ansible-playbook playbooks/image.yml -e image_target=rpi-arm64; rc=$$?; \
	echo "make image-rpi: $$(( $$(date +%s) - start )) s wall, rc=$$rc"; exit $$rc

seed: setup
	@test -n "$(HOST)" || { echo "make seed HOST=<inventory host> [INVENTORY=...] [DEVICE=/dev/sdX]"; exit 2; }
	$(BIN)/ansible-playbook -i $(INVENTORY) playbooks/flash.yml -e flash_hosts=$(HOST) $(if $(DEVICE),-e flash_device=$(DEVICE))

image-boot-test: image-rpi
	$(BIN)/python -m meshcore_tools.image.boot_test

image-repro: setup
	@bash scripts/image-repro.sh

agent-bundle: image
	@bash scripts/agent-bundle.sh

lab: image agent-bundle
	@start=$$(date +%s); \
	$(BIN)/ansible-playbook playbooks/lab.yml -e lab_nodes=$(NODES) -e lab_topology=$(TOPOLOGY) -e lab_seed=$(SEED); \
	rc=$$?; if [ -f build/lab/state.yml ]; then $(BIN)/labctl status || { [ $$rc -ne 0 ] || rc=1; }; fi; \
	echo "make lab: $$(( $$(date +%s) - start )) s wall, rc=$$rc"; exit $$rc

lab-status: setup
	@$(BIN)/labctl status

lab-report: setup
	@$(BIN)/labctl report

dashboard: setup
	$(BIN)/python -m meshcore_tools.grafana.dashboard

lab-destroy: setup
	@$(BIN)/labctl destroy

lint: setup
	$(BIN)/yamllint -s .
	$(BIN)/ansible-lint
	$(BIN)/ruff check files tools tests
	cd files/mesh_agent && ../../$(BIN)/mypy mesh_agent
	$(BIN)/mypy -p meshcore_tools -p meshcore_testkit

unit: setup
	$(BIN)/pytest -q files/mesh_agent/tests tests --ignore=tests/bench -p no:cacheprovider

molecule: image agent-bundle
	@set -e; for s in $(MOLECULE_SCENARIOS); do \
	  echo "=== molecule test -s $$s"; $(BIN)/molecule test -s $$s; done

molecule-full: image
	@set -e; for s in $(MOLECULE_FULL_SCENARIOS); do \
	  echo "=== molecule test -s $$s"; $(BIN)/molecule test -s $$s; done

test: lint unit molecule

# The image, booted under QEMU as a molecule instance (ssh on a forwarded port).
molecule-image: image-rpi
	$(BIN)/molecule test -s image

test-full: test molecule-full image-rpi molecule-image
	$(BIN)/pytest -q tests/test_monitoring_netns.py tests/test_lab_e2e.py tests/test_lab_yggdrasil.py tests/test_lab_identity_rotation.py tests/test_dashboard_lab.py tests/test_image_rpi.py --run-slow -p no:cacheprovider

bench: setup
	@set -e; for b in tests/bench/bench_*.py; do $(BIN)/python $$b; done

FUZZ_SECONDS ?= 600
fuzz: setup
	MESHCORE_FUZZ_SECONDS=$(FUZZ_SECONDS) $(BIN)/pytest -q files/mesh_agent/tests/test_fuzz_lsdb.py -k atheris -p no:cacheprovider
