# dsocr-perf: capture on a GPU machine, analyse anywhere.
IMAGE ?= launch/assets/sample_page.png
MODE ?= gundam
MAX_NEW_TOKENS ?= 256
NAME ?= run
WEIGHTS ?=
REPEATS ?= 1
ENGINE ?= faithful
TRACE ?= traces/$(NAME).sqlite
ARGS ?=

.PHONY: trace analyze test
# Random weights (and so --ignore-eos) unless WEIGHTS=DIR names a checkpoint folder.
trace:            ## capture under nsys + the PyTorch profiler: make trace IMAGE=page.png [WEIGHTS=dir] [NAME=run] [ENGINE=fast]
	dsocr-trace $(IMAGE) --mode $(MODE) --max-new-tokens $(MAX_NEW_TOKENS) --repeats $(REPEATS) --name $(NAME) \
	  --engine $(ENGINE) \
	  $(if $(WEIGHTS),--weights $(WEIGHTS),--random-weights) $(ARGS)

analyze:          ## the stage table of a trace: make analyze TRACE=traces/run.sqlite
	dsocr-analyze $(TRACE)

test:
	python -m pytest -q
