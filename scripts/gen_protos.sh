#!/usr/bin/env bash
# Regenerate the Python stubs from protos/ into the directory given (default: generated).
# The proto package is routing_sidecar.v1; its stubs are emitted under the distinct top-level
# Python package routing_sidecar_api (protoc's virtual path mapping) so they never shadow
# src/routing_sidecar. Import them as routing_sidecar_api.routing_sidecar.v1.router_pb2.
set -euo pipefail
out="${1:-generated}"
here="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$here/.venv/bin/python}"
wkt="$("$py" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')"
rm -rf "$out/routing_sidecar_api"
mkdir -p "$out"
cd "$here"
protos=$(cd protos && find routing_sidecar -name '*.proto' | sort | sed 's|^|routing_sidecar_api/|')
# shellcheck disable=SC2086
"$py" -m grpc_tools.protoc -Irouting_sidecar_api=protos -I"$wkt" \
  --python_out="$out" --grpc_python_out="$out" \
  --plugin=protoc-gen-mypy="$(dirname "$py")/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$(dirname "$py")/protoc-gen-mypy_grpc" \
  --mypy_out="$out" --mypy_grpc_out="$out" $protos >/dev/null
find "$out/routing_sidecar_api" -type d -exec sh -c 'echo "\"\"\"Generated gRPC stubs; do not edit (make protos).\"\"\"" > "$1/__init__.py"' _ {} \;
touch "$out/routing_sidecar_api/py.typed"
