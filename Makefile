# Two commands from a fresh clone: `make demo` and `make test`. Both set up .venv first if needed.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# CPU build by default (it lies on this machine's disk); a GPU user sets TORCH_SPEC="torch" or a CUDA pin.
TORCH_SPEC ?= torch==2.13.0
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export MLFLOW_DISABLE_TELEMETRY ?= true
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-fast lint bench ui-mlflow ui-prefect clean

$(BIN)/kontext: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	@touch $(BIN)/kontext

setup: $(BIN)/kontext

demo: setup
	$(BIN)/kontext run --params params.yaml
	@echo "MLflow UI: make ui-mlflow (http://127.0.0.1:5000); Prefect UI: make ui-prefect (http://127.0.0.1:4200)"

test: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/kontext dvc-yaml --check
	$(BIN)/python -m pytest -q
	# Against a real `prefect server start`, in a process of their own: Prefect's clients and event
	# workers are per process, and the rest of the suite already pointed them at its ephemeral API.
	$(BIN)/python -m pytest -q -m prefect_server

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/kontext dvc-yaml --check

bench: setup
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/scan.py
	$(BIN)/python bench/train_step.py

ui-mlflow: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5000

ui-prefect: setup
	$(BIN)/prefect server start

clean:
	rm -rf data cache models artifacts mlruns mlflow.db .prefect
