# Thin wrappers: manage.py does the work and bootstraps .venv, so plain `python3 manage.py ...` works too.
PYTHON ?= python3
ARGS ?=

.PHONY: run test lint bench venv fuzz compose-test

run:
	$(PYTHON) manage.py up --seed

# make test ARGS="-k claims -x"
test:
	$(PYTHON) manage.py test $(ARGS)

# The schema fuzz test, long: 200 examples per operation with a fresh seed (FUZZ_SEED=<n> replays one).
FUZZ_EXAMPLES ?= 200
fuzz:
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PYTHON) manage.py test tests/integration/test_fuzz.py $(ARGS)

lint: venv
	.venv/bin/ruff check .

bench:
	$(PYTHON) manage.py bench $(ARGS)

# Builds the images and runs docker-compose.yml for one round; needs dockerd (see .ci/run).
compose-test:
	$(PYTHON) manage.py compose-test $(ARGS)

venv:
	$(PYTHON) manage.py bootstrap
