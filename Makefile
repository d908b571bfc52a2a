# Two commands do everything on a fresh machine:
#   make run    install what is missing, then serve (embedded model when no OpenAI key)
#   make test   install the test tools (and redis-server, chromium via apt), lint, test
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
STAMP := $(VENV)/.stamp
# The model `make test` loads: the smallest, so CI stays quick.
TEST_MODEL ?= smollm2-135m

.PHONY: run test lint format bench bench-local install install-dev install-local system-deps clean fuzz

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP)-core: requirements.txt | $(BIN)/python
	$(PIP) install -q -r requirements.txt
	touch $@

$(STAMP)-dev: requirements-dev.txt $(STAMP)-core
	$(PIP) install -q -r requirements-dev.txt
	touch $@

$(STAMP)-local: requirements-local.txt $(STAMP)-core
	@echo ">> Installing llama-cpp-python. The first time it compiles llama.cpp from source:"
	@echo ">> about 5 minutes on 2 cores (pip caches the wheel; later installs take seconds)."
	CMAKE_ARGS="$${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" $(PIP) install --progress-bar on --no-deps --require-hashes -r requirements-local.txt \
		|| { echo "llama-cpp-python failed to build: it needs gcc, g++ and cmake (apt-get install build-essential cmake)"; exit 1; }
	touch $@

install: $(STAMP)-core
install-dev: $(STAMP)-dev
install-local: $(STAMP)-local

run: $(STAMP)-core
	@provider=$$($(BIN)/python -c 'from webapp.config import Config; print(Config.from_env().resolved_provider)') || exit 1; \
	if [ "$$provider" = local ]; then \
		echo ">> No OPENAI_API_KEY or OPENAI_BASE_URL: using the embedded local model."; \
		$(MAKE) --no-print-directory install-local && $(BIN)/python -m webapp.models prepare || exit 1; \
	fi; \
	exec $(BIN)/gunicorn --config gunicorn.conf.py wsgi:app

# redis-server, chromium and openssl (a test certificate) for the tests; apt where it can.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			echo ">> apt-get install$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else \
			echo ">> cannot install$$missing (no apt or not root): those tests will skip, or fail with CI=true"; \
		fi; \
	fi

lint: $(STAMP)-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: $(STAMP)-dev $(STAMP)-local system-deps lint
	LOCAL_MODEL=$(TEST_MODEL) $(BIN)/python -m webapp.models prepare
	@set +e; $(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

# nginx is the bench's reference relay; apt installs it where it can (else its column is skipped).
bench: $(STAMP)-dev
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			echo ">> apt-get install nginx-light"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null; \
		fi; }
	$(BIN)/python -m bench.relay

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache tests/artifacts

bench-local: $(STAMP)-dev $(STAMP)-local
	LOCAL_MODEL=$(TEST_MODEL) $(BIN)/python -m webapp.models prepare
	$(BIN)/python -m bench.local --model $(TEST_MODEL)

# A longer fuzzing run than make test's bounded one.
fuzz: $(STAMP)-dev
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-1000} $(BIN)/python -m pytest -q tests/test_openapi.py -k fuzz
