# efexport: make onnx VARIANT=l3 | make coreml VARIANT=l3 | make tensorrt VARIANT=l3 | make coreai VARIANT=l3 | make all
# | make test | make lint
# The virtual environment is created on first use; torch is the 2.13.0 CPU build (constraints.txt).
# The targets, variants, their recipes, precisions and package folders come from targets.mk, which
# `efexport targets --makefile` generates from the registries (tests/test_make.py checks it is current).
include targets.mk

VARIANT ?= l1
OUT ?= artifacts
ARGS ?=
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup $(TARGET_NAMES) all test test-fast lint clean help

# make all: every variant x platform as a verified package plus its reproducible bundle, in parallel with -j,
# incrementally: a package is rebuilt only when its recipe, efexport's code or data, or its weights changed.
# Weights per variant: WEIGHTS_l3=path/to/ckpt.pth (random-init, marked not deployable, when unset).
# A target's documented non-failure exit (TensorRT's 8: portable half written, no engine here) is not a failure of make.
VARIANTS ?= $(VARIANT_NAMES)
PLATFORMS ?= $(TARGET_NAMES)
BUNDLES ?= $(OUT)/bundles
SOURCES := $(shell find exporter validate -type f \( -name '*.py' -o -name '*.json' -o -name '*.toml' -o -name '*.txt' \) \
             -not -path '*/__pycache__/*' | sort)
package_manifest = $(OUT)/$(MODEL_$(1))/$(2)-$(PRECISION_$(2))/manifest.json
package_bundle = $(BUNDLES)/$(MODEL_$(1))-$(2)-$(PRECISION_$(2)).zip

define PACKAGE_RULES
$(call package_manifest,$(1),$(2)): $(RECIPE_$(2)) $(SOURCES) $(WEIGHTS_$(1)) | $(STAMP)
	$(BIN)/efexport $(2) --variant $(1) $(if $(WEIGHTS_$(1)),--weights $(WEIGHTS_$(1))) --recipe $(RECIPE_$(2)) \
		--out $(OUT) --force --quiet $(ARGS) $(if $(OK_EXIT_$(2)),|| test $$$$? -eq $(OK_EXIT_$(2)))

$(call package_bundle,$(1),$(2)): $(call package_manifest,$(1),$(2))
	$(BIN)/efexport bundle $$(dir $$<) --bundle-dir $(BUNDLES) --quiet
endef
$(foreach v,$(VARIANTS),$(foreach p,$(PLATFORMS),$(eval $(call PACKAGE_RULES,$(v),$(p)))))

all: $(foreach v,$(VARIANTS),$(foreach p,$(PLATFORMS),$(call package_bundle,$(v),$(p))))

help:
	@echo "VARIANT is one of: $(VARIANT_NAMES)"
	@echo "make onnx VARIANT=l1 [ARGS='--weights ckpt.pth']        export to ONNX into $(OUT)/"
	@echo "make coreml VARIANT=s0 [ARGS='--precision fp32']        export to Core ML (.mlpackage) into $(OUT)/"
	@echo "make coreai VARIANT=l3 [ARGS='--precision fp32']        export to Core AI (.aimodel), parity on Apple's runtime"
	@echo "make tensorrt VARIANT=l3                                TensorRT: prepared ONNX, build_engine.sh, engine.json"
	@echo "                                                        (+ model.plan where TensorRT and a GPU exist)"
	@echo "make all [-j2] [VARIANTS='l1 l3'] [PLATFORMS='onnx coreml'] [WEIGHTS_l3=ckpt.pth]"
	@echo "                                                        every variant x platform, packages + bundles"
	@echo "                                                        in $(OUT)/bundles; only what changed is redone"
	@echo "make test                                               run the test suite"
	@echo "make lint                                               ruff"
	@echo "make setup                                              create $(VENV) and install"

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,onnxslim,coreml,coreai]'
	touch $(STAMP)

# make onnx, make coreml, ...: one export of VARIANT per registered target
$(TARGET_NAMES): $(STAMP)
	$(BIN)/efexport $@ --variant $(VARIANT) --out $(OUT) --force $(ARGS) $(if $(OK_EXIT_$@),|| test $$? -eq $(OK_EXIT_$@))

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup --durations=15

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
	find $(OUT) -mindepth 1 ! -name README.md -exec rm -rf {} +
