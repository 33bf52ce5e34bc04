# The two commands a newcomer needs: `make run` and `make test` (see README).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test install bench base-image clean

$(STAMP): pyproject.toml package.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	npm install --no-audit --no-fund --silent
	touch $(STAMP)

install: $(STAMP)

## Set up (venv, packages, database, first admin, templates, base image) and start the portal in the foreground.
run: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py bootstrap
	$(PY) manage.py load_project_templates
	$(PY) manage.py make_base_image --optional
	$(PY) scripts/run_portal.py

## Run every test: unit, integration (real Docker engine, worker, Redis/PostgreSQL when configured) and end-to-end.
test: install
	$(PY) -m pytest $(PYTEST_ARGS)

## The benchmarks under benchmarks/ (they print figures and ratios against their peers).
bench: install
	$(PY) benchmarks/run_all.py

## Make the configured base image offline (debootstrap) if the Docker engine lacks it.
base-image: install
	$(PY) manage.py make_base_image

clean:
	rm -rf $(VENV) node_modules
