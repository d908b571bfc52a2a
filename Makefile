# Two commands do everything on a fresh machine:
#   make run    install what is missing, then serve (embedded model when no OpenAI key)
#   make test   install the test tools (and redis-server, chromium, postgresql via apt), lint, test
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
STAMP := $(VENV)/.stamp
# The model `make test` loads: the smallest, so CI stays quick.
TEST_MODEL ?= smollm2-135m

.PHONY: run test lint format bench bench-local eval install install-dev install-local system-deps clean fuzz lock

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Both are hashed locks of the whole tree (see `make lock`).
$(STAMP)-core: requirements.txt | $(BIN)/python
	$(PIP) install -q --require-hashes -r requirements.txt
	touch $@

$(STAMP)-dev: requirements-dev.txt $(STAMP)-core
	$(PIP) install -q --require-hashes -r requirements-dev.txt
	touch $@

$(STAMP)-eval: requirements-eval.txt $(STAMP)-dev
	$(PIP) install -q --no-deps --require-hashes -r requirements-eval.txt
	touch $@

# The embedded model's runtime. Not a stamp: `webapp.providers.runtime install` checks which
# llama.cpp build the venv holds against the one this CPU gets (portable unless
# LLAMA_NATIVE=1) and installs it from a cache keyed by its flags, compiling once.
install-local: $(STAMP)-core
	$(BIN)/python -m webapp.providers.runtime install

install: $(STAMP)-core
install-dev: $(STAMP)-dev

run: $(STAMP)-core static/pyodide/.stamp-versioned static/vendor/markdown-it.min.js
	@provider=$$($(BIN)/python -c 'from webapp.config import Config; print(Config.from_env().resolved_provider)') || exit 1; \
	if [ "$$provider" = local ]; then \
		echo ">> No OPENAI_API_KEY or OPENAI_BASE_URL: using the embedded local model."; \
		$(MAKE) --no-print-directory install-local || exit 1; \
		$(BIN)/python -m webapp.providers.models prepare; rc=$$?; \
		if [ $$rc = 3 ]; then \
			echo ">> Serving anyway: the page and the API answer 503 local_model_invalid until this is fixed."; \
		elif [ $$rc != 0 ]; then exit $$rc; fi; \
	fi; \
	exec $(BIN)/gunicorn --config gunicorn.conf.py wsgi:app

# redis-server, chromium, nginx (a TLS proxy), openssl (a test certificate), npm
# (axe-core) and PostgreSQL (the history tests start a throwaway cluster) for the
# tests; apt where it can.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx-light"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing="$$missing postgresql"; \
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

# axe-core for the page's accessibility tests: from npm, pinned with its integrity
# hash in package-lock.json (npm ci refuses anything else), no install scripts.
node_modules/.package-lock.json: package.json package-lock.json
	@if command -v npm >/dev/null; then npm ci --ignore-scripts --no-audit --no-fund --loglevel=error; \
	else echo ">> npm is missing: the accessibility tests will skip, or fail with CI=true"; fi

# Pyodide for the page's Run button, copied from its npm package into static/, where
# the app serves it (no CDN), in a folder named by its version: a URL whose content never
# changes, which browsers may keep for good. Without npm the page works, with no Run button.
PYODIDE_FILES := pyodide.mjs pyodide.asm.mjs pyodide.asm.wasm python_stdlib.zip pyodide-lock.json
static/pyodide/.stamp-versioned: node_modules/.package-lock.json
	@if [ -d node_modules/pyodide ]; then \
		version=$$($(PY) -c 'import json; print(json.load(open("node_modules/pyodide/package.json"))["version"])') && \
		rm -rf static/pyodide && mkdir -p static/pyodide/$$version && \
		(cd node_modules/pyodide && cp $(PYODIDE_FILES) ../../static/pyodide/$$version/) && touch $@; \
	else echo ">> Pyodide is not installed (no npm): the page's Run button stays off"; fi

# markdown-it for the page's streaming prose (the server renders the final answer with its
# Python port, markdown-it-py, by the same rules), copied from its npm package into static/.
static/vendor/markdown-it.min.js: node_modules/.package-lock.json
	@if [ -f node_modules/markdown-it/dist/browser/markdown-it.umd.min.js ]; then \
		mkdir -p static/vendor && cp node_modules/markdown-it/dist/browser/markdown-it.umd.min.js $@; \
	else echo ">> markdown-it is not installed (no npm): streaming prose shows as plain text until the answer ends"; fi

test: $(STAMP)-dev $(STAMP)-eval install-local system-deps node_modules/.package-lock.json static/pyodide/.stamp-versioned static/vendor/markdown-it.min.js lint
	LOCAL_MODEL=$(TEST_MODEL) $(BIN)/python -m webapp.providers.models prepare
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

# pass@1 on HumanEval through the API (the even half; EVAL_ARGS="--subset odd" for the
# held-out one). Starts the app as `make run` would; the embedded model when no key is set.
eval: $(STAMP)-eval
	@provider=$$($(BIN)/python -c 'from webapp.config import Config; print(Config.from_env().resolved_provider)') || exit 1; \
	if [ "$$provider" = local ]; then \
		$(MAKE) --no-print-directory install-local && $(BIN)/python -m webapp.providers.models prepare || exit 1; \
	fi; \
	$(BIN)/python -m bench.eval $(EVAL_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache tests/artifacts node_modules static/pyodide static/vendor

bench-local: $(STAMP)-dev install-local
	LOCAL_MODEL=$(TEST_MODEL) $(BIN)/python -m webapp.providers.models prepare
	$(BIN)/python -m bench.local --model $(TEST_MODEL)

# A longer fuzzing run than make test's bounded one.
fuzz: $(STAMP)-dev
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-1000} $(BIN)/python -m pytest -q tests/web/test_openapi.py -k fuzz

# Recompile the hashed locks from requirements.in and requirements-dev.in, with a pinned
# pip-tools in its own venv, against PyPI alone: a machine's pip config may add a local
# mirror or find-links, whose files must not feed the lock that Heroku installs from.
LOCK_VENV := .cache/lock-venv
LOCK_ENV := env -u PIP_FIND_LINKS -u PIP_CONSTRAINT -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null
PIP_COMPILE := $(LOCK_ENV) $(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras $(LOCK_ARGS)

$(LOCK_VENV)/bin/pip-compile:
	$(PY) -m venv $(LOCK_VENV)
	$(LOCK_ENV) $(LOCK_VENV)/bin/python -m pip install -q pip==26.3 pip-tools==7.6.2

# make lock                          after editing a .in file
# make lock LOCK_ARGS=--upgrade      also move the unpinned (transitive) packages to their latest
lock: $(LOCK_VENV)/bin/pip-compile
	$(PIP_COMPILE) requirements.in -o requirements.txt
	$(PIP_COMPILE) requirements-dev.in -o requirements-dev.txt
