#!/usr/bin/env bash
# Regenerates the key table at the end of docs/config.md from the parser's schema
# (`dfssm validate --schema`). tests/test_trainer.cpp fails when the two disagree.
set -euo pipefail
cd "$(dirname "$0")/.."
head=$(sed '/^| key | type |/,$d' docs/config.md)
{ printf '%s\n' "$head"; build/bin/dfssm validate --schema; } > docs/config.md.tmp
mv docs/config.md.tmp docs/config.md
