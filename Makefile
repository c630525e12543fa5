# dsocr-perf: capture on a GPU machine, analyse anywhere. `make help` lists the targets.
IMAGE ?= launch/assets/sample_page.png
MODE ?= gundam
MAX_NEW_TOKENS ?= 256
NAME ?= run
WEIGHTS ?=
REPEATS ?= 1
ENGINE ?= faithful
TRACE ?= traces/$(NAME).sqlite
ARGS ?=
DSOCR_TRACE ?= dsocr-trace
# make ncu decodes 32 tokens unless MAX_NEW_TOKENS is given: application-range replay profiles every decode step
# as a range of its own (~1 s each).
NCU_MAX_NEW_TOKENS = $(if $(filter command line environment,$(origin MAX_NEW_TOKENS)),$(MAX_NEW_TOKENS),32)
SOURCE = $(if $(WEIGHTS),--weights $(WEIGHTS),--random-weights)

.PHONY: help trace ncu analyze test
help:             ## list the targets
	@awk -F':.*## ' '/^[a-z][a-z-]*:.*## / {printf "  %-9s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# Random weights (and so --ignore-eos) unless WEIGHTS=DIR names a checkpoint folder.
trace:            ## capture under nsys + the PyTorch profiler: make trace IMAGE=page.png [WEIGHTS=dir] [NAME=run] [ENGINE=fast] [ARGS=...]
	$(DSOCR_TRACE) $(IMAGE) --mode $(MODE) --max-new-tokens $(MAX_NEW_TOKENS) --repeats $(REPEATS) --name $(NAME) \
	  --engine $(ENGINE) $(SOURCE) $(ARGS)

ncu:              ## the same session under Nsight Compute, counters per stage range: make ncu IMAGE=page.png [ARGS=--ncu-kernels]
	$(DSOCR_TRACE) $(IMAGE) --ncu --mode $(MODE) --max-new-tokens $(NCU_MAX_NEW_TOKENS) --name $(NAME) \
	  --engine $(ENGINE) $(SOURCE) $(ARGS)

analyze:          ## the stage table of a trace: make analyze TRACE=traces/run.sqlite
	dsocr-analyze $(TRACE)

test:             ## the CPU test suite
	python -m pytest -q
