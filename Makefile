# Set-up is part of every target: a fresh clone needs only `make run` or `make test`.
PYTHON ?= python3
VENV   ?= .venv
# sam2 1.1.0 is an sdist whose CUDA extension is optional: never try to build it (CPU machines, CI).
export SAM2_BUILD_CUDA := 0

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $@

.PHONY: run test
run: $(VENV)/.installed
	$(VENV)/bin/qsam2 quantize --out out/quantize

# Slow tests (hiera_l repeats of the hiera_t/s/b+ checks) are opt-in: make test PYTEST_ARGS="-m ''".
# pytest exits 5 when it collects no test (e.g. a -k filter that matches nothing): not a failure here.
PYTEST_ARGS ?= -m "not slow"
test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]
