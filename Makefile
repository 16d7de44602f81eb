# Two commands on a fresh machine:  make demo  |  make test
# The venv is rebuilt only when setup.cfg or pyproject.toml change.
VENV   ?= .venv
PY     := $(VENV)/bin/python
BR     := $(VENV)/bin/bridge-ray
# The CPU build of torch; pinned first so pip never pulls a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.bridge-ray-installed

.PHONY: demo test test-unit install clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[train,test]"
	touch $@

# Local Ray cluster -> SFT of a tiny offline model on synthetic GSM8K (CPU) -> merged HF model -> down.
demo: $(STAMP)
	$(BR) up --name demo --num-cpus 2
	$(BR) submit recipes/sft_gsm8k.py --name demo --follow; rc=$$?; $(BR) down --name demo --force; exit $$rc

# Everything CI runs: unit + integration (real Ray, real verl on CPU) + real SLURM.
test: $(STAMP)
	bash tests/run.sh

test-unit: $(STAMP)
	$(PY) -m pytest -q -m "not integration and not slurm and not gpu"

clean:
	rm -rf $(VENV)
