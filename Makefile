# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# torch first and pinned: this machine holds the CPU wheel; an unpinned torch pulls a CUDA build.
TORCH := torch==2.13.0

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

DEMO := $(VENV)/bin/tunegrade grade tasks/data-prep/solutions/good --task data-prep --candidate demo-candidate --out graded/demo

# The sandbox is bubblewrap: installed here when we can (root on Debian/Ubuntu). Without it the
# grader refuses candidate code; the demo grades the bundled, trusted example anyway, and says so.
demo: $(STAMP)
	@if ! command -v bwrap >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing bubblewrap, the sandbox (apt-get install bubblewrap)"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; }; \
	fi
	@if $(PY) -c "import sys; from sandbox.local import LocalSandbox; sys.exit(not LocalSandbox().usable)"; then \
		$(DEMO); \
	else \
		echo "bubblewrap is not usable here: grading the bundled, trusted example with --allow-reduced-isolation"; \
		$(DEMO) --allow-reduced-isolation; \
	fi

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --durations=30

clean:
	rm -rf $(VENV) graded build *.egg-info
