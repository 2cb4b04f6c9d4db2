#!/usr/bin/env bash
# Fail when the committed stubs in generated/ differ from what protos/ would generate now.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$here/scripts/gen_protos.sh" "$tmp"
if ! diff -r -x __pycache__ "$tmp/routing_sidecar_api" "$here/generated/routing_sidecar_api" >/dev/null; then
  echo "generated/ is stale: run 'make protos' and commit the result" >&2
  diff -r -x __pycache__ "$tmp/routing_sidecar_api" "$here/generated/routing_sidecar_api" | head -20 >&2
  exit 1
fi
echo "generated/ matches protos/"
