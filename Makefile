# make run  - set up .venv on first use, then start the OptLab app
# make test - set up .venv on first use, then run the whole test suite
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PORT   ?= 8501
ADDRESS ?=

.PHONY: run test cli bench clean

$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m streamlit run app.py --server.port $(PORT) $(if $(ADDRESS),--server.address $(ADDRESS))

test: $(STAMP)
	$(PY) -m pytest -q

cli: $(STAMP)
	$(PY) -m optlab run --preset cpu-quick

bench: $(STAMP)
	$(PY) bench/loop_overhead.py
	$(PY) bench/speedrun.py

clean:
	rm -rf $(VENV)
