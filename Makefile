# Every target sets up what it needs from the repository's own files.
# `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAGE  ?= dev
MODEL_DIR ?= build/model
# ALARM_EMAIL=oncall@example.com subscribes that address to the alarm topic (make deploy/diff).
ALARM_CONTEXT = $(if $(ALARM_EMAIL),-c alarm_email='$(ALARM_EMAIL)')
# Extra `cdk deploy` / `cdk diff` flags, e.g. CI's --require-approval=never (docs/ci-cd.md).
CDK_DEPLOY_FLAGS ?=
CDK_DIFF_FLAGS ?=
export JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION := 1
# jsii >= 1.1xx names the Node 20 banner differently; it takes the major version(s).
export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
# Lambda rejects an OCI image index; buildx's default provenance attestation (and the containerd
# image store keeping it) turns a single-platform build into one. The pinned CDK CLI sets this for
# its own builds too; exported here for every build this Makefile starts (docs/infrastructure.md).
export BUILDX_NO_DEFAULT_ATTESTATIONS := 1
# cdk bootstrap/destroy synthesize the app but deploy none of it: no model needed (app.py).
NO_MODEL := -c without_model=true

REQS := requirements.txt requirements-dev.txt lambda_src/requirements.txt model_export/requirements.txt

.PHONY: help install demo serve test lint format model synth templates image-check bench cost events bootstrap preflight deploy diff destroy clean batch-demo batch loadtest soak

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: $(REQS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(VENV)/.installed node_modules/.installed ## Create .venv and node_modules from the pinned files

demo: install ## Run the local end-to-end demo (no AWS account needed)
	$(PY) -m local_mode.demo

serve: install ## Keep the local endpoint up (Ctrl-C to stop)
	$(PY) -m local_mode.serve

batch-demo: install ## Run a batch prediction (Distributed Map) locally over an S3 server (no AWS)
	$(PY) -m local_mode.batch_demo

batch: install ## Classify every image under URI=s3://<input bucket>/<prefix>/ on STAGE's state machine
	@test -n "$(URI)" || { echo "usage: make batch URI=s3://<input bucket>/<prefix>/ [STAGE=dev]"; exit 2; }
	$(PY) -m classifier_client batch $(URI) --stage $(STAGE)

test: install ## Run every test
	$(VENV)/bin/pytest

lint: install ## ruff (lint + format check), mypy, and the GitHub workflows (zizmor, schema)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/zizmor --offline .github/workflows
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

format: install ## Apply ruff's formatting and safe fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

model: install ## Export the model to build/model (WEIGHTS=imagenet|random|PATH, QUANTIZE=none|int8)
	$(PY) -m model_export --weights $(or $(WEIGHTS),auto) --quantize $(or $(QUANTIZE),none) --out $(MODEL_DIR)

$(MODEL_DIR)/manifest.json:
	$(MAKE) model

synth: install $(MODEL_DIR)/manifest.json ## Synthesize every stage into cdk.out (exports a model first if there is none) and cfn-lint them
	npx cdk synth --quiet -c model_dir=$(MODEL_DIR)
	$(VENV)/bin/cfn-lint cdk.out/*.template.json

templates: install ## Refresh the reviewed templates under templates/
	$(PY) -m stacks.snapshot --write

image-check: install ## Prove the Lambda image builds: wheels for x86_64+arm64, hadolint
	$(PY) -m scripts.image_check

bench: install ## Benchmarks: tables, bench/results/*.json and a plot
	$(PY) -m bench

cost: install ## Monthly cost model: on-demand vs provisioned concurrency
	$(PY) -m bench.cost

loadtest: install $(MODEL_DIR)/manifest.json ## Load profiles, faults and a soak; JSON, plot, docs/reliability.md (ARGS="--outputs-file cdk-outputs-dev.json ..." for a stage)
	$(PY) -m reliability.loadtest --model-dir $(MODEL_DIR) $(if $(ARGS),$(ARGS),--write-docs)

soak: install $(MODEL_DIR)/manifest.json ## Long soak: 20,000 requests through one environment (REQUESTS=N)
	$(PY) -m reliability.soak --model-dir $(MODEL_DIR) --requests $(or $(REQUESTS),20000)

bootstrap: install ## Once per account/region: CDK bootstrap + API Gateway's logging role (no model needed)
	npx cdk bootstrap $(NO_MODEL)
ifeq ($(APIGW_LOGGING_ROLE),keep)
	@echo "APIGW_LOGGING_ROLE=keep: the account's API Gateway logging role is left as it is"
else
	npx cdk deploy ResnetServingAccount $(NO_MODEL) --require-approval never \
	  || { echo "retrying in 30 s: a new IAM role can take that long to reach API Gateway"; \
	       sleep 30; npx cdk deploy ResnetServingAccount $(NO_MODEL) --require-approval never; }
endif

preflight: install ## Before deploying STAGE: account, bootstrap, quotas, Docker, model, API logging role
	$(PY) -m preflight --stage $(STAGE) --model-dir $(MODEL_DIR)

deploy: preflight ## Deploy STAGE (dev|prod) to the current AWS account (runs preflight first)
	npx cdk deploy -c stage=$(STAGE) -c model_dir=$(MODEL_DIR) $(ALARM_CONTEXT) --outputs-file cdk-outputs-$(STAGE).json $(CDK_DEPLOY_FLAGS)

diff: install $(MODEL_DIR)/manifest.json ## Show what a deploy of STAGE would change
	npx cdk diff -c stage=$(STAGE) -c model_dir=$(MODEL_DIR) $(ALARM_CONTEXT) $(CDK_DIFF_FLAGS)

destroy: install ## Delete STAGE's stack; needs no model (see README for what stays behind)
	npx cdk destroy -c stage=$(STAGE) $(NO_MODEL)

events: ## Re-record tests/events/*.json with the AWS SAM CLI (in a throwaway venv)
	bash scripts/generate_events.sh

.PHONY: smoke
smoke: $(VENV)/.installed ## After a deploy: /health, /predict of the reference photo, served sha256 and top-1 vs the manifest (STAGE=dev|prod|local)
	$(PY) -m classifier_client.smoke --stage $(STAGE) --model-dir $(MODEL_DIR)

# atheris comes from its own file (fuzz/requirements.txt): Linux x86_64 wheels only, and no test
# or image needs it.
FUZZ_SECONDS ?= 60

$(VENV)/.fuzz-installed: $(VENV)/.installed fuzz/requirements.txt
	$(PY) -m pip install --quiet -r fuzz/requirements.txt
	touch $@

.PHONY: fuzz
fuzz: $(VENV)/.fuzz-installed ## Fuzz image decoding and event parsing (atheris), FUZZ_SECONDS per target (60); findings in build/fuzz/
	$(PY) -m fuzz --seconds $(FUZZ_SECONDS)

clean: ## Remove build output (keeps .venv and node_modules)
	rm -rf build cdk.out .pytest_cache .ruff_cache .mypy_cache
