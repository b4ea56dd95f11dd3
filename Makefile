# The two set-up commands of README.md: `make demo` and `make test`.
VENV := .venv
DATA := data/default
OUT := outputs
# the demo's own run folders: its short runs never replace the checkpoints of full-length training
# in runs/audio_classifier and runs/s2i_c, which experiments/*.yaml and the README's commands read
RUNS := runs/demo

.PHONY: install install-test demo test

install:
	bash scripts/install.sh

# install + Debian's chromium and chromedriver, which the rating-page tests drive through Selenium
install-test:
	bash scripts/install.sh --test

# The main job on the built-in default data, sized for a CPU (about 4 minutes on 2 cores):
# build the stand-in, check and cache it, train the sound classifier, train S2I-C briefly on its
# frozen encoder, and generate frames from a held-out player's audio. Full-length training and the
# ablation grid: see README.md (a GPU is advised).
demo: install
	$(VENV)/bin/cmav data build --preset default --root $(DATA)
	$(VENV)/bin/cmav data check $(DATA)
	$(VENV)/bin/cmav data cache $(DATA)
	$(VENV)/bin/cmav data sheet $(DATA) -o $(OUT)/contact_sheet.png
	$(VENV)/bin/cmav fit --config experiments/audio_classifier.yaml --data.root $(DATA) --trainer.max_epochs 3 \
		--trainer.default_root_dir $(RUNS)/audio_classifier
	$(VENV)/bin/cmav fit --config experiments/s2i_c.yaml --data.root $(DATA) --trainer.max_epochs 1 \
		--trainer.default_root_dir $(RUNS)/s2i_c \
		--model.init_args.audio_encoder_ckpt $(RUNS)/audio_classifier/checkpoints/last.ckpt
	$(VENV)/bin/cmav generate --ckpt $(RUNS)/s2i_c/checkpoints/last.ckpt \
		--audio $(DATA)/chunk/validation/violin/violin06_2000.wav -n 8 -o $(OUT)/s2i_c_violin06.png

# lint first (seconds; the rules are in pyproject.toml's [tool.ruff]), then the suite. A worker that
# dies (a segfault, or pytest-timeout ending a hung test) stops the run at once and the summary
# names its test: pytest-xdist would otherwise rerun that test on a new worker, and with
# --dist loadfile a replaced worker can wait forever for work (pytest-xdist#784).
test: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile --max-worker-restart=0
