# The README's two commands: `make demo` and `make test`. Both create .venv on first use.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SCRATCH := $(CURDIR)/.cache
export MPLCONFIGDIR := $(SCRATCH)/mpl
export XDG_CACHE_HOME := $(SCRATCH)/xdg
export TORCHINDUCTOR_CACHE_DIR := $(SCRATCH)/inductor

.PHONY: setup demo test test-all bench lint clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: on these machines this takes the CPU build lying on disk
	# (a looser spec would download a multi-GB CUDA build). pyproject only asks torch>=2.3.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# optional MTCNN weights (facelab align --detector mtcnn); --no-deps: the package pins an old torch,
	# facelab only reads its weight files and never imports it
	$(BIN)/pip install -q --no-deps facenet-pytorch==2.6.0
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/facelab demo

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m ''

bench: setup
	$(BIN)/python -m bench

lint: setup
	$(BIN)/ruff check src tests bench

# MTCNN weights alone (facelab align --detector mtcnn), e.g. into a venv made before they joined the $(STAMP) recipe.
# Not a pyproject extra: facenet-pytorch pins torch<2.3 and torchvision, so a resolving pip would break the venv.
.PHONY: setup-detector
setup-detector: setup
	$(BIN)/pip install -q --no-deps facenet-pytorch==2.6.0

# pytorch-metric-learning as a wheel for the GPU machine's Python 3.12 (no registry there): bench/gpu_check.sh
.PHONY: gpu-wheels
gpu-wheels:
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux2014_x86_64 -d .whl 'pytorch-metric-learning>=2.9,<3'

# headless Chromium for the index.html rendering test (Debian package; the test is skipped without a browser)
.PHONY: setup-browser
setup-browser:
	apt-get update -qq && apt-get install -y chromium

clean:
	rm -rf $(VENV) $(SCRATCH) runs data
