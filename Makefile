# Quick start: `make demo` (the whole pipeline on this machine) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements-dev.txt collector/requirements.txt | cksum | cut -d' ' -f1)
NODE_STAMP := node_modules/.installed-$(shell cksum < package-lock.json 2>/dev/null | cut -d' ' -f1)

.PHONY: demo test lint bench bench-audit rehearse lock daily-job-package synth clean

$(STAMP): requirements-dev.txt collector/requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	rm -f $(VENV)/.installed-* && touch $@

$(NODE_STAMP): package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	rm -f node_modules/.installed-* && touch $@

demo: $(STAMP)
	$(PY) -m sandbox.demo

test: $(STAMP) $(NODE_STAMP) lint
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .

bench: $(STAMP)
	$(PY) -m bench.run

bench-audit: $(STAMP)
	$(PY) -m bench.audit_day

rehearse: $(STAMP) $(NODE_STAMP)
	$(PY) -m pytest -m rehearsal -v

lock: $(STAMP)
	$(PY) -m userdata.lock

# The daily job's layer (pip for Linux aarch64, no Docker), cached under build/ by its lock's hash; synth builds it
# on demand too, so this only moves the download out of the first synth.
daily-job-package: $(STAMP)
	$(PY) -m stacks.daily_job_package

synth: $(STAMP) $(NODE_STAMP) daily-job-package
	npx cdk synth

clean:
	rm -rf cdk.out build .pytest_cache .ruff_cache .hypothesis
