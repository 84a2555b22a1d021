# maglev developer recipes.  `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Install maglev (editable) with its test tools; compiles the C extension.
setup:
    rm -f maglev/_native*.so
    python3 -m pip install -q -e '.[test]'

# Fast rebuild of the C extension in place (no pip).
build:
    python3 maglev/_cffi_src/build.py

# The whole test suite (what CI runs).
test *ARGS:
    python3 -m pytest {{ARGS}}

# ruff over Python; the C extension built with -Wall -Wextra -Werror.
lint:
    ruff check .
    MAGLEV_CFLAGS=-Werror python3 maglev/_cffi_src/build.py

# Benchmarks: print measurements and ratios; never fail on a slow machine.
bench:
    for b in bench/bench_*.py; do echo "== $b"; python3 "$b"; done
