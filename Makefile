# make run  - set up .venv on first use, then start the OptLab app
# make test - set up .venv on first use, then run the whole test suite
# make workshop - serve a room on the local network (see README: Workshop mode)
# make ray  - install Ray into .venv, for the queue on a Ray cluster (see README)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RAY_STAMP := $(VENV)/.ray-installed
PORT   ?= 8501
ADDRESS ?=

.PHONY: run test cli bench clean workshop ray

$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

# Ray is optional for running OptLab; the tests install it so that CI exercises the queue on Ray.
$(RAY_STAMP): requirements-ray.txt $(STAMP)
	$(PY) -m pip install --quiet -r requirements-ray.txt
	touch $(RAY_STAMP)

ray: $(RAY_STAMP)

run: $(STAMP)
	$(PY) -m streamlit run app.py --server.port $(PORT) $(if $(ADDRESS),--server.address $(ADDRESS))

# A room: every interface, XSRF protection on, the address to share printed, links (personal links,
# TensorBoard) built on that address; limits per person unless already set. The instructor secret
# is printed here only, for the person who started the server; it never goes into a link.
workshop: $(STAMP)
	@host=$${OPTLAB_PUBLIC_HOST:-$$($(PY) -m optlab.netaddr)}; \
	secret=$${OPTLAB_INSTRUCTOR_SECRET:-$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(12))')}; \
	echo "Share this address with the room:  http://$$host:$(PORT)/workshop"; \
	echo "Instructor secret (for you only; type it on the Workshop page): $$secret"; \
	OPTLAB_WORKSHOP=1 OPTLAB_INSTRUCTOR_SECRET=$$secret OPTLAB_PUBLIC_HOST=$$host \
	OPTLAB_PUBLIC_URL=http://$$host:$(PORT) OPTLAB_TB_HOST=$${OPTLAB_TB_HOST:-0.0.0.0} \
	OPTLAB_MAX_QUEUED=$${OPTLAB_MAX_QUEUED:-3} OPTLAB_RUN_BUDGET_S=$${OPTLAB_RUN_BUDGET_S:-600} \
	$(PY) -m streamlit run app.py --server.address 0.0.0.0 --server.port $(PORT) \
		--server.enableXsrfProtection true --server.headless true --browser.gatherUsageStats false

# Three pytest processes (pytest-xdist, one test file each at a time) on CI's two cores: the suite
# waits on browsers, servers, worker processes and torchrun as much as it computes, and a third
# process fills those waits (the whole suite on 2 cores: 617 s with two, 557 s with three).
# OpenMP threads sleep instead of spinning while they wait, so processes sharing the cores do
# not slow each other down several-fold.
# Files are handed out in collection order (tests/conftest.py puts the longest first), not
# xdist's default of the files with the most tests first, which left two long files for the end.
TEST_PROCS ?= 3
test: $(STAMP) $(RAY_STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -n $(TEST_PROCS) --dist loadfile --no-loadscope-reorder

cli: $(STAMP)
	$(PY) -m optlab run --preset cpu-quick

bench: $(STAMP)
	$(PY) bench/loop_overhead.py
	$(PY) bench/speedrun.py

clean:
	rm -rf $(VENV)
