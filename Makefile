# medsearch: `make help` lists the targets.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# The CPU build of torch; for a CUDA build: make install TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"
TORCH_SPEC ?= torch==2.13.0

# Demo: the production model by default; OFFLINE=1 uses a random tiny SigLIP built locally instead.
MODEL    ?= google/medsiglip-448
HOST     ?= 127.0.0.1
PORT     ?= 8000
SAMPLE   := data/sample-archive.zip
RANDOM_MODEL := data/random-siglip
ifeq ($(OFFLINE),1)
DEMO_MODEL := $(RANDOM_MODEL)
DEMO_DB    := data/demo-db-random-model
else
DEMO_MODEL := $(MODEL)
DEMO_DB    := data/demo-db
endif

.PHONY: help install test docs screenshots lint demo sample bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'
	@echo "  make demo OFFLINE=1   the demo with a random test model, where the model hub cannot be reached"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install medsearch with its test and lint tools

test: $(STAMP) ## Run the whole test suite (CI runs exactly this)
	$(PY) -m pytest

docs: $(STAMP) ## Build the manual (docs/, MkDocs) into site/: open site/index.html
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

screenshots: $(STAMP) ## The browser tests, keeping their screenshots in data/screenshots/
	MEDSEARCH_SCREENSHOT_DIR=data/screenshots $(PY) -m pytest tests/search_api/test_web_page.py tests/search_api/test_workstation_page.py tests/search_api/test_report_page.py

lint: $(STAMP) ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

$(SAMPLE): | $(STAMP)
	$(VENV)/bin/medsearch-index sample-archive $(SAMPLE)

$(RANDOM_MODEL)/config.json: | $(STAMP)
	$(VENV)/bin/medsearch-index random-model $(RANDOM_MODEL)

sample: $(SAMPLE) ## Build the sample archive from real DICOM files shipped in pydicom and pydicom-data

demo: $(STAMP) $(SAMPLE) $(if $(filter 1,$(OFFLINE)),$(RANDOM_MODEL)/config.json) ## Index the sample archive and serve it on 127.0.0.1:8000
	@$(VENV)/bin/medsearch-index run $(SAMPLE) --db $(DEMO_DB) --model $(DEMO_MODEL) \
	  || { status=$$?; if [ "$(OFFLINE)" != 1 ] && [ $$status -eq 2 ]; then \
	    echo ""; echo "The model $(DEMO_MODEL) could not be loaded (see the error above)."; \
	    echo "Offline option: make demo OFFLINE=1   (a RANDOM tiny SigLIP: everything works, results are meaningless)"; \
	    echo "Or point MODEL at a local copy:  make demo MODEL=/path/to/medsiglip-448"; fi; exit $$status; }
	$(VENV)/bin/medsearch-api serve --db $(DEMO_DB) --host $(HOST) --port $(PORT) --open

BASE_MODEL := data/random-base
GRID_MODEL := data/random-medsiglip-grid
MEDSIGLIP_MODEL := data/random-medsiglip
WIDE_MODEL := data/random-wide
# the scale bench's archive sizes (256-d); add 1000000,10000000 where the machine has the hours and ~40 GB
SCALE_SIZES ?= 10000,30000,100000

$(BASE_MODEL)/config.json: | $(STAMP)
	$(VENV)/bin/medsearch-index random-model $(BASE_MODEL) --shape base

$(GRID_MODEL)/config.json: | $(STAMP)
	$(VENV)/bin/medsearch-index random-model $(GRID_MODEL) --shape medsiglip-grid

$(WIDE_MODEL)/config.json: | $(STAMP)
	$(VENV)/bin/medsearch-index random-model $(WIDE_MODEL) --shape wide

$(MEDSIGLIP_MODEL)/config.json: | $(STAMP)
	$(VENV)/bin/medsearch-index random-model $(MEDSIGLIP_MODEL) --shape medsiglip

bench: $(STAMP) $(SAMPLE) $(RANDOM_MODEL)/config.json $(BASE_MODEL)/config.json $(GRID_MODEL)/config.json $(MEDSIGLIP_MODEL)/config.json $(WIDE_MODEL)/config.json ## Benchmarks: bench/results/*.json, SUMMARY.md, plots (~60 min; the search bench ~30)
	$(PIP) install --quiet -e ".[bench]"
	rm -f bench/results/*.json bench/results/*.png bench/results/SUMMARY.md
	$(PY) -m bench.search_bench --sizes 200000,1000000
	$(PY) -m bench.build_memory --sizes 150000,300000 --dim 256
	$(PY) -m bench.api_bench --repeat 50 --models $(RANDOM_MODEL),$(BASE_MODEL)
	$(PY) -m bench.indexing_throughput --encoder null --model $(BASE_MODEL) --input-size 448 --batch-size 32
	$(PY) -m bench.indexing_throughput --model $(BASE_MODEL) --images 48 --batch-size 16 --naive --quantize --reports
	$(PY) -m bench.ray_throughput --model $(BASE_MODEL) --images 96
	if command -v Orthanc >/dev/null; then $(PY) -m bench.pacs_throughput --model $(BASE_MODEL) --generated 100; \
	else echo "bench: Orthanc is not installed (apt-get install orthanc orthanc-dicomweb): PACS bench skipped"; fi
	$(PY) -m bench.report_bench --reports 1000000 --no-postgres
	$(PY) -m bench.report_bench --reports 100000
	$(PY) -m bench.explain_bench --models $(RANDOM_MODEL),$(GRID_MODEL) --timing-only $(BASE_MODEL),$(MEDSIGLIP_MODEL)
	$(PY) -m bench.scale --model $(WIDE_MODEL) --sizes $(SCALE_SIZES)
	$(PY) -m bench.report

clean: ## Remove the virtual environment and generated demo data
	rm -rf $(VENV) data site .pytest_cache .mypy_cache .ruff_cache
