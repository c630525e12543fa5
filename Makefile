# dsocr-perf: capture on a GPU machine, analyse anywhere.
IMAGE ?= launch/assets/sample_page.png
MODE ?= gundam
MAX_NEW_TOKENS ?= 256
NAME ?= run
TRACE ?= traces/$(NAME).sqlite
ARGS ?=

.PHONY: trace analyze test
trace:            ## capture one page under nsys + the PyTorch profiler: make trace IMAGE=page.png
	dsocr-trace $(IMAGE) --mode $(MODE) --max-new-tokens $(MAX_NEW_TOKENS) --name $(NAME) $(ARGS)

analyze:          ## the stage table of a trace: make analyze TRACE=traces/run.sqlite
	dsocr-analyze $(TRACE)

test:
	python -m pytest -q
