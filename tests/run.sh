#!/usr/bin/env bash
# The whole test suite: Rust unit, model, concurrency and doc tests, then the
# C, C++ and Python tests against the built library. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test"
cargo test --all-targets
cargo test --doc
