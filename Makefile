# Two entry points (see README): `make run` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV ?= .venv
# Label Studio's own environment (its pins clash with ours): the annotation server of
# `labelfactory annotate` and tests/test_label_studio.py.
LS_VENV ?= .venv-label-studio
# Choose another CUDA build of torch for older cluster drivers, e.g.
#   make TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 run
TORCH_INDEX_URL ?=
CORES ?= all
# Your own config runs alone (the toy default config/config.yaml applies only without one):
#   make run CONFIG=my.yaml [TARGETS="results/<task>/for_annotation"] [PROFILE=slurm] [ARGS=-n]
# The targets go before --configfile, whose list of files would otherwise swallow them.
PROFILE ?= local
SNAKEMAKE = $(VENV)/bin/snakemake --profile profiles/$(PROFILE) --cores $(CORES)
CONFIG_ARGS = $(if $(CONFIG),--configfile $(CONFIG))
PIP_EXTRA := $(if $(TORCH_INDEX_URL),PIP_EXTRA_INDEX_URL=$(TORCH_INDEX_URL),)

export MPLBACKEND := Agg
export HF_HUB_OFFLINE := 1

.PHONY: setup run test dryrun ablations pretraining figures clean-results

setup: $(VENV)/.installed $(LS_VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml envs/install_detectron2.sh envs/labelfactory.post-deploy.sh
	$(PYTHON) -m venv $(VENV)
	$(PIP_EXTRA) bash envs/labelfactory.post-deploy.sh $(VENV)/bin/python
	touch $@

$(LS_VENV)/.installed: envs/label-studio-requirements.txt envs/install_label_studio.sh
	bash envs/install_label_studio.sh $(PYTHON) $(LS_VENV)
	touch $@

run: setup
	$(SNAKEMAKE) $(TARGETS) $(CONFIG_ARGS) $(ARGS)

dryrun: setup
	$(SNAKEMAKE) -n $(TARGETS) $(CONFIG_ARGS) $(ARGS)

# The toy ablations (docs/ablations.md); not part of `run`.
ablations: setup
	$(SNAKEMAKE) ablations $(CONFIG_ARGS) $(ARGS)

# The toy transfer experiment (docs/pretraining.md), over the toy default's tasks; not part of `run`.
pretraining: setup
	$(SNAKEMAKE) pretraining --configfile config/config.yaml config/pretraining-toy.yaml $(ARGS)

# Redraw every table and figure from existing results; nothing is trained.
FIGURE_RULES := main_table sample_grid class_grid label_quality calibration ablation_report
figures: setup
	$(SNAKEMAKE) figures --forcerun $(FIGURE_RULES) --allowed-rules figures $(FIGURE_RULES) $(CONFIG_ARGS) $(ARGS)

# The import layers (.importlinter) first, then one test file per worker (module fixtures stay
# in one process), one worker per core.
test: setup
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -q -n auto --dist loadfile

clean-results:
	rm -rf results .snakemake
