# Two commands: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# This machine has a local CPU build of torch 2.13.0; the package itself only asks for torch>=2.1,
# so GPU users get their CUDA build. Override with `make TORCH_SPEC=torch ...`.
TORCH_SPEC ?= torch==2.13.0
SHARED ?= $(abspath ../shared)
MODEL  ?= $(SHARED)/models/stories260k
CALIB  ?= $(SHARED)/data/tinystories/tinystories_train_prefix.txt
EVAL   ?= $(SHARED)/data/tinystories/tinystories_valid_prefix.txt
SPARSITY ?= 0.25
METHOD ?= slicegpt
SEQLEN ?= 256
EVAL_SEQLEN ?= 512

.PHONY: demo test test-all venv install bench clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed-test: $(VENV)/bin/activate pyproject.toml
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[test]"
	touch $@

venv: $(VENV)/bin/activate
install: $(VENV)/.installed-test

demo: $(VENV)/.installed-test
	SHARED=$(SHARED) $(PY) benchmarks/demo.py --model "$(MODEL)" --calib "$(CALIB)" --eval "$(EVAL)" \
		--method $(METHOD) --sparsity $(SPARSITY) --calib-seqlen $(SEQLEN) --eval-seqlen $(EVAL_SEQLEN)

# pytest's exit code 5 ("no tests collected") counts as a failure.
test: $(VENV)/.installed-test
	@$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

# everything, the `heavy` tests included (about 6 minutes more)
test-all: $(VENV)/.installed-test
	$(PY) -m pytest -q -m "" $(PYTEST_ARGS)

bench: $(VENV)/.installed-test
	$(PY) benchmarks/bench_compress.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
