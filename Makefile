# efexport: make onnx VARIANT=l3 | make coreml VARIANT=l3 | make tensorrt VARIANT=l3 | make test | make lint
# The virtual environment is created on first use; torch is the 2.13.0 CPU build (constraints.txt).

VARIANT ?= l1
OUT ?= artifacts
ARGS ?=
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup onnx coreml tensorrt test test-fast lint clean help

help:
	@echo "make onnx VARIANT=l1|l3|l7 [ARGS='--weights ckpt.pth']  export to ONNX into $(OUT)/"
	@echo "make coreml VARIANT=l1|l3|l7 [ARGS='--precision fp32']   export to Core ML (.mlpackage) into $(OUT)/"
	@echo "make tensorrt VARIANT=l1|l3|l7                          TensorRT: prepared ONNX, build_engine.sh, engine.json"
	@echo "                                                        (+ model.plan where TensorRT and a GPU exist)"
	@echo "make test                                               run the test suite"
	@echo "make lint                                               ruff"
	@echo "make setup                                              create $(VENV) and install"

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,onnxslim]'
	touch $(STAMP)

onnx: $(STAMP)
	$(BIN)/efexport onnx --variant $(VARIANT) --out $(OUT) --force $(ARGS)

coreml: $(STAMP)
	$(BIN)/efexport coreml --variant $(VARIANT) --out $(OUT) --force $(ARGS)

# exit code 8 means the portable half was written but no engine could be built here: not a failure of make
tensorrt: $(STAMP)
	$(BIN)/efexport tensorrt --variant $(VARIANT) --out $(OUT) --force $(ARGS) || test $$? -eq 8

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --durations=15

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
	find $(OUT) -mindepth 1 ! -name README.md -exec rm -rf {} +
