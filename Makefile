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
SERVER_LOG := $(PREFECT_HOME)/pytest-prefect-server.log
# pytest-xdist workers of `make test` (CI has two cores; each worker's torch gets cores/workers threads).
TEST_WORKERS ?= 2

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
	# Two pytest processes side by side, each printing its own summary:
	# - the tests against a real `prefect server start`, in a process of their own (Prefect's clients
	#   and event workers are per process, and the rest of the suite points them at its ephemeral
	#   API). Beside the rest, it takes up the cores' slack (the rest waits on subprocesses and
	#   servers too, and one worker runs alone at the end). Output: $(SERVER_LOG), printed when
	#   both are done;
	# - the rest on $(TEST_WORKERS) pytest-xdist workers (CI has two cores), a whole file per worker at a time
	#   (a file's tests share its fixtures and may follow each other), the longest files first
	#   (tests/conftest.py: LONG_FILES).
	@mkdir -p $(PREFECT_HOME); rm -f $(SERVER_LOG); \
	$(BIN)/python -m pytest -q -p no:cacheprovider -m prefect_server > $(SERVER_LOG) 2>&1 & server=$$!; \
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder; main=$$?; \
	wait $$server; server_rc=$$?; \
	echo "== pytest -m prefect_server (beside the rest; exit $$server_rc)"; cat $(SERVER_LOG); \
	test $$main -eq 0 && test $$server_rc -eq 0

test-fast: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow"

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
