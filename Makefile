# Every target works on a fresh Debian machine as root: it installs what it needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEBS := python3-venv python3-dev gcc
# What the tests use for real: network namespaces and nftables (partitions, loss), libvirt
# (libvirt-python builds against libvirt-dev; libvirtd with the test driver), ipmitool
# (IPMI fencing against virtualbmc), corosync (the detection benchmark's baseline), QEMU and
# libvirt's QEMU driver (the instance monitor against a real guest under TCG).
SYSDEBS := iproute2 nftables libvirt-dev libvirt-daemon pkg-config ipmitool corosync \
	qemu-system-x86 libvirt-daemon-driver-qemu

.PHONY: demo test bench deps clean

$(STAMP): pyproject.toml
	@if ! command -v $(PYTHON) >/dev/null 2>&1 || ! $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 \
			|| ! command -v gcc >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 $(DEBS); fi
	@if ! command -v nft >/dev/null 2>&1 || ! command -v ipmitool >/dev/null 2>&1 \
			|| ! command -v corosync >/dev/null 2>&1 || ! command -v libvirtd >/dev/null 2>&1 \
			|| ! pkg-config --exists libvirt 2>/dev/null || ! command -v ip >/dev/null 2>&1 \
			|| ! command -v qemu-system-x86_64 >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SYSDEBS); fi
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "hagent needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

deps: $(STAMP)

demo: $(STAMP)
	$(PY) -m hagent.lab.demo

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup tests

bench: $(STAMP)
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) benchmarks/results/*.json
