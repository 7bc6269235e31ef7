# Shortcuts for ./dev, which needs nothing but Python 3.11+ and a POSIX shell.
CONFIG ?=

.PHONY: run test bench clean

run:
	./dev run $(if $(CONFIG),--config $(CONFIG),)

test:
	./dev test

bench:
	.venv/bin/python bench/ingest.py

clean:
	rm -rf .venv var
