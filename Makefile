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
# The longest first (build/molecule/report.json), so the last to start are short ones.
MOLECULE_SCENARIOS ?= mesh_agent spire batman_adv alertmanager prometheus base node_exporter grafana
MOLECULE_FULL_SCENARIOS ?= etcd yggdrasil chaos_reaper
# Scenarios at a time (meshcore_tools.molecule_run; 1 streams the output as it comes).
MOLECULE_JOBS ?= 2
HOST ?=
# The site: an inventory with its site config (group_vars/all/site.yml). The image,
# the seeds and site.yml all read it.
INVENTORY ?= inventories/starter
DEVICE ?=
# The operator's SSH public key for the cards' admin user (make seed).
SSH_KEY ?= $(firstword $(wildcard $(HOME)/.ssh/id_ed25519.pub $(HOME)/.ssh/id_ecdsa.pub $(HOME)/.ssh/id_rsa.pub))
# SPIRE join_token sites: a file holding the node's token (spire-server token generate).
JOIN_TOKEN_FILE ?=
# The emulated Pis (make hw-lab): native, batman or both.
BACKEND ?= both
# make hw-lab SOAK=900: leave the quiet emulated mesh alone that long and count false link deaths.
SOAK ?= 0
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
# Molecule instance and network names end in this, so two checkouts on one
# machine can run `make molecule` at the same time.
export MESHCORE_CHECKOUT_ID ?= $(shell printf %s "$(CURDIR)" | sha256sum | cut -c1-6)
# The content-addressed tag `make image` built for this checkout (read when each
# recipe runs, so after the image target): lab, molecule and bundle use it.
export MESHCORE_IMAGE = $(shell cat build/images/container-amd64.ref 2>/dev/null || echo localhost/meshcore-base:latest)
# molecule runs ansible-playbook and ansible-config from PATH: the venv's, never Debian's.
# The sbin directories last: make seed runs as a user, whose PATH on Debian lacks them
# (sfdisk).
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH):/usr/sbin:/sbin
export ANSIBLE_FORCE_COLOR ?= 1
export PY_COLORS ?= 1

.PHONY: chaos chaos-clean dataset help release setup venv pki-backup hw-lab image image-rpi seed image-boot-test image-repro agent-bundle lab lab-status lab-report lab-destroy dashboard test test-full test-full-lab test-full-image test-full-hw lint unit molecule molecule-full molecule-image bench fuzz results

help:
	@echo "make lab [NODES=10] [TOPOLOGY=grid|rgg|ladder|community|FILE]   build + provision the lab mesh"
	@echo "make lab-status | lab-destroy                                  status table | remove the lab"
	@echo "make lab-report                                                key series + build/lab/report.png"
	@echo "make dashboard                                                 regenerate the Grafana dashboard JSON"
	@echo "make chaos [EXPERIMENT=experiments/x.yml]  chaos experiments on the running lab (build/chaos: journals, report)"
	@echo "make chaos-clean                           remove every fault on record or tagged, on every lab node"
	@echo "make dataset [TOPOLOGY=file SEED=1 OUT=build/dataset]  record a labelled telemetry dataset (netns)"
	@echo "make test        lint + unit tests + molecule (fast scenarios)"
	@echo "make test-full   make test + the slow scenarios, in three parts that also run alone:"
	@echo "make test-full-lab | test-full-image | test-full-hw   lab and netns tests | the rpi image | three emulated Pis"
	@echo "make bench       benchmarks under tests/bench (one JSON line per figure)"
	@echo "make results     regenerate docs/results.md's table from docs/results/*.jsonl and index.yml"
	@echo "make fuzz [FUZZ_SECONDS=600]  coverage-guided fuzzing of the agent's advert handling (make test runs 20 s)"
	@echo "make image [IMAGE_TARGET=container-amd64|rpi-arm64]           build an image"
	@echo "make image-rpi [INVENTORY=inventories/starter]                 the site's SD-card image (rpi-arm64)"
	@echo "make seed HOST=name [INVENTORY=inventories/starter] [SSH_KEY=~/.ssh/id_ed25519.pub] [JOIN_TOKEN_FILE=] [DEVICE=]"
	@echo "                 a node's first-boot seed into a copy of the site's image (or a card); no root needed"
	@echo "make pki-backup [INVENTORY=]  the site's CA and keys (inventories/<site>.pki) into build/backup/, mode 0600"
	@echo "make hw-lab [BACKEND=both|native|batman] [SOAK=s]  three emulated Pis (QEMU TCG) seeded with make seed: mesh, route, scrape, site.yml (native)"
	@echo "make image-boot-test  boot the rpi-arm64 image under qemu-system-aarch64 (TCG) with a seed, check it"
	@echo "make image-repro      build rpi-arm64 twice from scratch with SOURCE_DATE_EPOCH, compare hashes"
	@echo "make agent-bundle     the agent's release bundle (a venv built in the base image) in build/agent"
	@echo "make release [REQUIRE_BUNDLES=1]  build/release/mesh-core-vX.Y.Z.tgz: reproducible, manifest, SBOMs (sign: docs/release.md)"
	@echo "make molecule-image   the rpi-arm64 image booted under QEMU as a molecule instance: converge, verify"
	@echo "make lint | unit | molecule | molecule-full   the parts of make test / test-full"
	@echo "make setup | venv     Debian packages, podman config and .venv (root) | only .venv (any user)"

setup:
	@bash scripts/setup.sh

# Only the venv, as any user: all make seed needs besides mtools.
venv:
	@bash scripts/setup.sh --venv

image: setup
	$(BIN)/ansible-playbook playbooks/image.yml -e image_target=$(IMAGE_TARGET)

# The site's SD-card image (arm64, through qemu-user); stages cached by input hash.
image-rpi: setup
	@start=$$(date +%s); \
	$(BIN)/ansible-playbook -i $(INVENTORY) playbooks/image.yml -e image_target=rpi-arm64; rc=$$?; \
	echo "make image-rpi: $$(( $$(date +%s) - start )) s wall, rc=$$rc"; exit $$rc

# No root: the venv, mtools and a copy of the image in build/flash (or DEVICE, a card you may write).
seed: venv
	@test -n "$(HOST)" || { echo "make seed HOST=<inventory host> [INVENTORY=$(INVENTORY)] [SSH_KEY=...] [DEVICE=/dev/sdX]"; exit 2; }
	@command -v mcopy >/dev/null || { echo "make seed needs mtools (Debian package mtools; make setup installs it)"; exit 2; }
	$(BIN)/ansible-playbook -i $(INVENTORY) playbooks/flash.yml -e flash_hosts=$(HOST) \
	  -e flash_ssh_key_file=$(SSH_KEY) $(if $(JOIN_TOKEN_FILE),-e flash_join_token_file=$(abspath $(JOIN_TOKEN_FILE))) \
	  $(if $(DEVICE),-e flash_device=$(DEVICE))

# The site CA and the node keys: secrets that exist nowhere else. Keep the
# archive offline (it is the only way to seed more cards for this site).
pki-backup:
	@d=$(patsubst %/,%,$(INVENTORY)).pki; test -d "$$d" || { echo "no $$d (nothing seeded yet, or site.identity.pki_dir points elsewhere)"; exit 2; }; \
	  mkdir -p build/backup && umask 077 && out=build/backup/$$(basename $$d)-$$(date +%Y%m%d-%H%M%S).tar.gz && \
	  tar -C $$(dirname $$d) -czf $$out $$(basename $$d) && echo "$$out ($$(tar -tzf $$out | wc -l) entries); restore: tar -C $$(dirname $$d) -xzf $$out"

# Three emulated Pis under qemu-system-aarch64 (TCG), seeded with make seed and
# wired with QEMU dgram netdevs: mesh, route and scrape with no Ansible run, then site.yml.
hw-lab: setup
	$(BIN)/python -m meshcore_tools.hwlab --backend $(BACKEND) --soak $(SOAK)

image-boot-test: image-rpi
	$(BIN)/python -m meshcore_tools.image.boot_test --inventory $(INVENTORY)

image-repro: setup
	@bash scripts/image-repro.sh

agent-bundle: image
	@bash scripts/agent-bundle.sh

# The release tarball from what is built (bundles it finds; REQUIRE_BUNDLES=1 needs both).
release: venv
	@start=$$(date +%s); \
	$(BIN)/ansible-playbook playbooks/release.yml $(if $(REQUIRE_BUNDLES),-e release_require_bundles=true); \
	rc=$$?; echo "make release: $$(( $$(date +%s) - start )) s wall, rc=$$rc"; exit $$rc

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

# The default suite (experiments/*.yml), or EXPERIMENT=file[,file], on the running lab.
EXPERIMENT ?=
chaos: setup
	$(BIN)/ansible-playbook playbooks/chaos.yml \
	  $(if $(EXPERIMENT),-e '{"chaos_experiments": $(shell printf '%s' '$(EXPERIMENT)' | $(BIN)/python -c 'import json,sys,os; print(json.dumps([os.path.abspath(p) for p in sys.stdin.read().split(",")]))')}')

chaos-clean: setup
	$(BIN)/ansible-playbook playbooks/chaos.yml --tags rollback

# A labelled telemetry dataset (docs/dataset.md) recorded on netns labs with real agents:
# the standard set (rgg:16, grid:9, community), or TOPOLOGY=<file|kind:n> SEED=<n> OUT=<dir>.
OUT ?= build/dataset
dataset: setup
	$(BIN)/python -m meshcore_tools.chaos dataset --seed $(SEED) --out $(OUT) \
	  $(if $(filter command line,$(origin TOPOLOGY)),--topology $(TOPOLOGY))

lint: setup
	$(BIN)/yamllint -s .
	$(BIN)/ansible-lint
	$(BIN)/ruff check files tools tests
	cd files/mesh_agent && ../../$(BIN)/mypy mesh_agent
	cd files/chaos && ../../$(BIN)/mypy meshcore_chaos
	$(BIN)/mypy -p meshcore_tools -p meshcore_testkit

unit: setup
	$(BIN)/pytest -q files/mesh_agent/tests tests --ignore=tests/bench -p no:cacheprovider --durations=20

molecule: image agent-bundle
	$(BIN)/python -m meshcore_tools.molecule_run --jobs $(MOLECULE_JOBS) $(MOLECULE_SCENARIOS)

molecule-full: image
	$(BIN)/python -m meshcore_tools.molecule_run --jobs $(MOLECULE_JOBS) $(MOLECULE_FULL_SCENARIOS)

test: lint unit molecule

# The image, booted under QEMU as a molecule instance (ssh on a forwarded port).
molecule-image: image-rpi
	$(BIN)/molecule test -s image

# make test-full = make test + its three parts. On a 2-core machine the whole takes
# about 4 h (the emulated Pis' site.yml runs most of it), so each part also runs
# alone, without make test: lab (slow molecule scenarios and lab/netns tests),
# image (the rpi image booted as a molecule instance) and hw (three emulated Pis).
SLOW_LAB_TESTS = files/mesh_agent/tests/test_mapek_netns.py tests/test_mapek_isolate_netns.py tests/test_mapek_flap_netns.py tests/test_monitoring_netns.py tests/test_lab_e2e.py tests/test_lab_yggdrasil.py tests/test_lab_identity_rotation.py tests/test_lab_chaos_suite.py tests/test_dashboard_lab.py tests/test_lab_leases.py tests/test_lab_restart_unit.py tests/test_chaos_reaper.py tests/test_chaos_suite_netns.py tests/test_chaos_rogue.py tests/test_rollout_lab.py tests/test_rollout_ssh.py

test-full: test test-full-lab test-full-image test-full-hw

test-full-lab: molecule-full
	$(BIN)/pytest -q $(SLOW_LAB_TESTS) --run-slow -p no:cacheprovider

test-full-image: image-rpi molecule-image
	$(BIN)/pytest -q tests/test_image_rpi.py --run-slow -p no:cacheprovider

test-full-hw: setup
	$(BIN)/pytest -q tests/test_hw_lab.py --run-slow -p no:cacheprovider

bench: setup
	@set -e; for b in tests/bench/bench_*.py; do $(BIN)/python $$b; done

# The generated table of docs/results.md, from the JSON lines and docs/results/index.yml.
results: setup
	$(BIN)/python -m meshcore_tools.results

FUZZ_SECONDS ?= 600
fuzz: setup
	MESHCORE_FUZZ_SECONDS=$(FUZZ_SECONDS) $(BIN)/pytest -q files/mesh_agent/tests/test_fuzz_lsdb.py -k atheris -p no:cacheprovider
