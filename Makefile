# Thin wrappers: manage.py does the work and bootstraps .venv, so plain `python3 manage.py ...` works too.
PYTHON ?= python3
ARGS ?=

.PHONY: run test lint bench venv compose-test

run:
	$(PYTHON) manage.py up --seed

# make test ARGS="-k claims -x"
test:
	$(PYTHON) manage.py test $(ARGS)

lint: venv
	.venv/bin/ruff check .

bench:
	$(PYTHON) manage.py bench $(ARGS)

# Builds the images and runs docker-compose.yml for one round; needs dockerd (see .ci/run).
compose-test:
	$(PYTHON) manage.py compose-test $(ARGS)

venv:
	$(PYTHON) manage.py bootstrap
