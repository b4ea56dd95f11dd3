# The two set-up commands of README.md: `make demo` and `make test`.
VENV := .venv
DATA := data/default
OUT := outputs

.PHONY: install demo test

install:
	bash scripts/install.sh

# The main job on the built-in default data: build the stand-in, check it, cache it, show it.
demo: install
	$(VENV)/bin/cmav data build --preset default --root $(DATA)
	$(VENV)/bin/cmav data check $(DATA)
	$(VENV)/bin/cmav data cache $(DATA)
	$(VENV)/bin/cmav data sheet $(DATA) -o $(OUT)/contact_sheet.png

test: install
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile
