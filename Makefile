# The two set-up commands of the README: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= runs/demo

.PHONY: setup demo test browser lab

$(VENV)/.installed: pyproject.toml scripts/setup_env.sh
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

test: setup browser
	$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc
