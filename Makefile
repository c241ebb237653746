# The two set-up commands of the README: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= runs/demo

.PHONY: setup demo test test-fast browser lab

$(VENV)/.installed: pyproject.toml setup.py scripts/setup_env.sh
	bash scripts/setup_env.sh $(VENV)
	touch $@

setup: $(VENV)/.installed

# The main job: a sweep report on the embedded tiny model, offline
# (executed notebook + standalone HTML + the sweep's table and images).
demo: setup
	$(VENV)/bin/img2img-lab report img2img_lab/assets/demo.yaml --out $(OUT)

browser:
	bash scripts/install_browser.sh

# The notebooks in JupyterLab (kernel cwd notebooks/; outputs under notebooks/runs/, ignored by git).
lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# pytest, where exit status 5 (no tests collected) fails too: $(call pytest,ENV,ARGS)
pytest = $(1) $(PY) -m pytest -q $(2); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

# Every test (the heavy tier, the browser tests and the JupyterLab tier included), then the
# equality tests again at 1 and 16 threads: tests/run_suite.py says how (the fast tier at the
# default thread count, the rest in two one-thread processes at once); each pytest in it fails
# on exit status 5 too. With PYTEST_ARGS, one plain pytest with them instead, e.g.
# `make test PYTEST_ARGS="-k runner -x"`.
test: setup browser
ifeq ($(strip $(PYTEST_ARGS)),)
	$(PY) tests/run_suite.py
else
	@$(call pytest,,$(PYTEST_ARGS))
endif

# While editing: the units and tiny end-to-end sweeps, without the heavy tier and the browsers.
test-fast: setup
	@$(call pytest,,-m "not (heavy or browser or jupyterlab)" $(PYTEST_ARGS))
