# The README's commands. Each one installs what it needs first (scripts/setup_env.sh is
# a no-op once the environment is up to date).
VENV := $(or $(EFL_VENV),.venv)
PY := $(VENV)/bin/python

.PHONY: setup test demo
setup:
	bash scripts/setup_env.sh

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	$(PY) tools/demo.py $(DEMO_ARGS)
