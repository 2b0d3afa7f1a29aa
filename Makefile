# The two commands of a fresh machine (Python 3.10+ and make; activate a venv or conda env
# first: everything installs into the active Python environment, as .ci/run does):
#
#   make reproduce    install, then `snakemake all` at the quick preset: every figure, every
#                     table and paper/main.pdf (the PDF needs TeX: see `install-tex` below)
#   make test         install, then ruff, snakemake --lint, the whole pytest suite (the pipeline tests included)
#                     and the pipeline through a real local SLURM where one can be started
#
# Other targets: `make smoke` (the smoke preset pipeline: every rule on tiny settings, minutes),
# `make install`, `make install-python`, `make install-tex`, `make lint`, `make help`.
#
# Every target that runs something installs first; `INSTALL=` skips that (the environment is
# ready): `make test INSTALL=`, `make reproduce INSTALL=`. A second install is quick (pip finds
# everything there; the TeX script does nothing when TeX is there).
#
# Variables (make VAR=value):
#   PYTHON=python3     the interpreter that installs and runs everything
#   INSTALL=install    the target run before test/reproduce/smoke; empty: none
#   TORCH=torch==2.13.0  installed before the package: the CPU build (an unpinned torch pulls
#                      several GB of CUDA packages). On a GPU machine, install the CUDA build of
#                      torch 2.13 yourself first; pip then keeps it.
#   TORCH_PIP_ARGS=    extra pip arguments for torch, e.g.
#                      --index-url https://download.pytorch.org/whl/cpu
#   CORES=all          snakemake --cores
#   SNAKEMAKE_ARGS=    more snakemake arguments for reproduce/smoke, e.g. --config seeds=[0]
#   PYTEST_ARGS=       more pytest arguments for test, e.g. -x
#   REQUIRE_TEX=1      test: a missing TeX engine fails the PDF test instead of skipping it
#                      (`make test REQUIRE_TEX=` where TeX cannot be installed)
#   SLURM=1            test: also the real-SLURM test (tests/slurm: Debian, as root; it says
#                      so and goes on when the cluster cannot start); `SLURM=` skips it
#
# install-tex runs scripts/install-tex.sh: latexmk and the LaTeX packages paper/main.tex needs
# from apt-get where they are missing (Debian/Ubuntu, as root or with password-less sudo); else
# it prints how to install TeX (conda: tectonic) and succeeds, and `snakemake all` builds
# everything but the PDF and says so. TOM_SKIP_TEX=1 skips it.

PYTHON ?= python3
INSTALL ?= install
TORCH ?= torch==2.13.0
TORCH_PIP_ARGS ?=
CORES ?= all
SNAKEMAKE_ARGS ?=
PYTEST_ARGS ?=
REQUIRE_TEX ?= 1
SLURM ?= 1
SLURM_LOG ?= /tmp/tom-slurm-cluster.log

PIP = $(PYTHON) -m pip
SNAKEMAKE = $(PYTHON) -m snakemake

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.NOTPARALLEL:
.PHONY: help install install-python install-tex lint test reproduce smoke

help:
	@echo "make reproduce   install, then snakemake all (quick preset): figures, tables, paper/main.pdf"
	@echo "make test        install, then ruff, pytest (pipeline tests included) and the SLURM test"
	@echo "make smoke       install, then snakemake all with config/smoke.yaml (every rule, minutes)"
	@echo "make install     pip: $(TORCH), then -e .[dev,pipeline]; TeX via scripts/install-tex.sh"
	@echo "make lint        ruff check and snakemake --lint"
	@echo "Skip the install: make test INSTALL=   (more variables: the header of Makefile)"

install: install-python install-tex

install-python:
	$(PIP) install --quiet --upgrade pip
	$(strip $(PIP) install --quiet $(TORCH_PIP_ARGS)) "$(TORCH)"
	$(PIP) install --quiet -e ".[dev,pipeline]"

install-tex:
	bash scripts/install-tex.sh

lint:
	$(PYTHON) -m ruff check src tests benchmarks notebooks
	$(SNAKEMAKE) --lint

test: $(INSTALL) lint
	$(strip TOM_REQUIRE_TEX=$(REQUIRE_TEX) $(PYTHON) -m pytest -q $(PYTEST_ARGS))
ifneq ($(SLURM),)
	# The pipeline through a real SLURM (tests/slurm): only where a local cluster can start.
	if bash tests/slurm/cluster.sh > $(SLURM_LOG) 2>&1; then \
	    TOM_SLURM_TEST=1 $(PYTHON) -m pytest -q tests/slurm; \
	else \
	    echo "SLURM test NOT run: tests/slurm/cluster.sh could not start a local cluster:" >&2; \
	    tail -n 5 $(SLURM_LOG) >&2; \
	fi
endif

reproduce: $(INSTALL)
	$(strip $(SNAKEMAKE) all --cores $(CORES) $(SNAKEMAKE_ARGS))

smoke: $(INSTALL)
	$(strip $(SNAKEMAKE) all --cores $(CORES) --configfile config/smoke.yaml $(SNAKEMAKE_ARGS))
