#!/usr/bin/env bash
# Regenerates tests/events/*.json: real API Gateway REST proxy events from the AWS SAM CLI.
# SAM is a dev-machine tool, deliberately not a project requirement; it runs from a throwaway
# venv outside the repository. Handler tests start from these events and only swap the body,
# headers, path or method (see tests/handler/conftest.py).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SAM_VENV:-/tmp/samvenv}"
if [[ ! -x "$venv/bin/sam" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "aws-sam-cli==${SAM_VERSION:-1.170.0}"
fi
export SAM_CLI_TELEMETRY=0
sam() { "$venv/bin/sam" local generate-event apigateway aws-proxy --stage prod "$@"; }
out="$root/tests/events"
mkdir -p "$out"
sam --method POST --resource /predict --path predict --body '{"image": ""}' \
  --querystringparameters '{"top_k": "3"}' >"$out/predict_post.json"
sam --method GET --resource /health --path health --body '' >"$out/health_get.json"
echo "$("$venv/bin/sam" --version)" >"$out/GENERATED_WITH.txt"
