"""``cmav fit|validate|test|predict``: Lightning's CLI over cmav's tasks and data.

``--model`` is any LightningModule by class path (``cmav.tasks.ClassifierTask``,
``cmav.tasks.S2ITask``; the short names work too); ``--data`` is the
:class:`~cmav.data.AudioVisualDataModule`. Configs live in ``experiments/``::

    cmav fit --config experiments/s2i_c.yaml
    cmav fit --config experiments/s2i_c.yaml --ckpt_path last      # resume
    cmav validate --config experiments/image_judge.yaml --ckpt_path runs/image_judge/checkpoints/last.ckpt

A run lives in ``trainer.default_root_dir``: checkpoints in ``<root>/checkpoints`` and the logger's
``save_dir`` set to the root (any ``save_dir`` a config gives is replaced), so
``--trainer.default_root_dir runs/s2i_c_seed1`` moves all of it. ``--ckpt_path last`` reads the newest
``last*.ckpt`` in ``<root>/checkpoints`` in every sub-command, and is an error when there is none (a
silent fresh start, or untrained weights scored, is never what it asks for).
"""

from __future__ import annotations

import os
import sys
import warnings
import zipfile
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.model_registry import _is_registry
from lightning.pytorch.utilities.warnings import PossibleUserWarning

import cmav.tasks  # noqa: F401  (registers the task classes for short names)
from cmav.bench.cpu_bf16 import warn_if_slow_bf16
from cmav.data.datamodule import AudioVisualDataModule
from cmav.data.errors import DataError


def _log_dir(default_root_dir: str | None) -> str:
    """The logger's save_dir: the run's root (Lightning's own default, the working directory, when unset)."""
    return str(default_root_dir) if default_root_dir is not None else os.getcwd()


class SettingsError(ValueError):
    """A model or data module refused its settings while the CLI built it; the message names which."""


def _own_refusal(exc: BaseException) -> tuple[BaseException, object | None] | None:
    """The ValueError that cmav code raised at the bottom of ``exc``'s chain of causes (jsonargparse
    wraps a class's refusal of its settings in "Does not validate against any of the Union subtypes"),
    with the object whose ``__init__`` raised it; None when the chain ends elsewhere."""
    package = os.path.dirname(os.path.abspath(cmav.__file__))
    seen, inner = set(), exc
    while inner.__cause__ is not None and id(inner.__cause__) not in seen:
        seen.add(id(inner))
        inner = inner.__cause__
    if inner is exc or not isinstance(inner, ValueError):
        return None
    frames, tb = [], inner.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    if not frames or not os.path.abspath(frames[-1].f_code.co_filename).startswith(package):
        return None  # raised by a library, not by a cmav check: keep the whole traceback
    owner = next((f.f_locals.get("self") for f in frames if f.f_code.co_name == "__init__"
                  and type(f.f_locals.get("self")).__module__.startswith("cmav.")), None)  # fmt: skip
    return inner, owner


class CmavCLI(LightningCLI):
    """LightningCLI with the frame size given once, by the data."""

    def instantiate_classes(self) -> None:
        """Build the components; a cmav class's refusal of its settings becomes one :class:`SettingsError`
        line (a :class:`DataError` stays one), not jsonargparse's wrapped error with every option's value."""
        try:
            super().instantiate_classes()
        except ValueError as exc:
            found = _own_refusal(exc)
            if found is None:
                raise
            inner, owner = found
            if isinstance(inner, DataError):
                raise inner from exc
            raise SettingsError(f"{self._component(owner)}: {inner}") from exc

    def _component(self, owner: object | None) -> str:
        """``model (its class_path)``, ``data`` or the class that refused its settings."""
        import lightning as L

        if isinstance(owner, L.LightningModule):
            sub = self.config.get("subcommand")
            model = (self.config.get(sub) if sub else self.config).get("model")
            path = model.get("class_path") if hasattr(model, "get") else None
            return f"model ({path or type(owner).__name__})"
        if isinstance(owner, L.LightningDataModule):
            return "data"
        return type(owner).__name__ if owner is not None else "settings"

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # Both tasks take image_size; the data decides it, so a model can't disagree with its frames.
        parser.link_arguments("data.image_size", "model.init_args.image_size", apply_on="parse")
        # The logger writes under default_root_dir too (the YAMLs' name "" gives <root>/version_N), so
        # --trainer.default_root_dir moves a run's logs with its checkpoints: two seeds of one YAML
        # do not share a log folder.
        parser.link_arguments("trainer.default_root_dir", "trainer.logger.init_args.save_dir", _log_dir, apply_on="parse")

    def before_fit(self) -> None:
        # cmav's tasks keep their frozen encoders, EMA generators and frozen diffusion parts in
        # eval mode on purpose (each task's train() says which), so Lightning's "Found N module(s)
        # in eval mode" is noise for them; a model from elsewhere keeps the warning.
        if type(self.model).__module__.startswith("cmav."):
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode", category=PossibleUserWarning)
            # The classifier and retrieval tasks build their networks in configure_model (so that
            # EMAWeightAveraging can copy them), which that callback takes for sharding; cmav shards nothing.
            warnings.filterwarnings("ignore", message=r"You're using the WeightAveraging callback with a model that "
                                    "overrides the configure_model")  # fmt: skip
        warn_if_slow_bf16(self.trainer)
        self._set_checkpoint_dirs(warn_outside_root=True)
        self._check_ckpt_path()  # with the dirpaths set: where `last` is looked for

    def _set_checkpoint_dirs(self, warn_outside_root: bool = False) -> None:
        """Point every ModelCheckpoint without a dirpath at ``<default_root_dir>/checkpoints``, in
        every sub-command: that is where fit writes last.ckpt, so it is where ``--ckpt_path last``
        must look in validate/test/predict too (Lightning's own default there, the logger's version
        folder, holds none, and it would quietly score untrained weights)."""
        # A checkpoint callback without a dirpath writes under default_root_dir, so that one key,
        # --trainer.default_root_dir, moves a whole run and a second run cannot overwrite the first's
        # last.ckpt. (Lightning's own default, the logger's version folder, would also move with each
        # new version, and `--ckpt_path last` would no longer find the killed run's checkpoint.)
        root = Path(self.trainer.default_root_dir).resolve()
        for cb in self.trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                cb.dirpath = str(root / "checkpoints")
            elif (warn_outside_root and (where := getattr(cb, "dirpath", None))
                  and not Path(where).resolve().is_relative_to(root)):  # fmt: skip
                warnings.warn(f"checkpoints go to {where}, outside trainer.default_root_dir {root}: another run with "
                              "that dirpath writes over this one's last.ckpt. Leave the ModelCheckpoint's dirpath "
                              "unset to keep them in <default_root_dir>/checkpoints", UserWarning, stacklevel=1)  # fmt: skip

    def _parse_ckpt_path(self) -> None:
        # Lightning reads a --ckpt_path file while parsing (for its hyper-parameters): check it first
        self._check_ckpt_path(resolve_last=False)
        super()._parse_ckpt_path()

    def _check_ckpt_path(self, resolve_last: bool = True) -> None:
        """Refuse a ``--ckpt_path`` that names no checkpoint file (missing, a folder), or whose file (for
        ``last``: the newest last*.ckpt of the checkpoint folders) is not a whole checkpoint, naming it:
        torch's own error ("failed finding central directory") names neither the file nor the likely
        cause, a save cut off by a kill. ``last`` with no such file is refused too: Lightning would only
        warn, then train from scratch (fit) or score untrained weights (validate, test, predict)."""
        subcommand = self.config.get("subcommand")
        given = self.config.get(subcommand, {}).get("ckpt_path") if subcommand else None
        if not given:
            if subcommand in ("validate", "test", "predict") and resolve_last:
                # Lightning then uses the model as the config builds it: a figure that reads like a trained model's
                warnings.warn(f"no --ckpt_path: `cmav {subcommand}` scores the weights the config builds (untrained, "
                              "but for any encoder it loads); give --ckpt_path last (this run's last.ckpt) or a "
                              "checkpoint file", UserWarning, stacklevel=1)  # fmt: skip
            return
        if given == "last":
            if not resolve_last:  # no trainer yet
                return
            path = self._last_checkpoint(subcommand)
        elif given in ("best", "hpc") or _is_registry(given) or "://" in str(given):  # resolved (or read) by Lightning
            return
        else:
            path = Path(given)
            if path.is_dir():
                raise DataError(path, "is a folder, not a checkpoint file (e.g. runs/<name>/checkpoints/last.ckpt)")
            if not path.exists():
                raise DataError(path, "no such checkpoint")
        if path.is_file() and not zipfile.is_zipfile(path):  # torch.save writes a zip archive
            raise DataError(path, "not a readable checkpoint (half-written or corrupt?): resume from an earlier "
                                  "one, or start again without --ckpt_path")  # fmt: skip

    def _last_checkpoint(self, subcommand: str) -> Path:
        """The file ``--ckpt_path last`` loads (Lightning's choice: the newest last*.ckpt in the checkpoint
        callbacks' folders); a DataError naming the folder when there is none."""
        callbacks = [cb for cb in self.trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)]
        if not callbacks:
            raise DataError(self.trainer.default_root_dir, "--ckpt_path last: no ModelCheckpoint callback "
                            "(trainer.enable_checkpointing is off?) says where last.ckpt is; give the checkpoint file")  # fmt: skip
        found = [Path(p) for cb in callbacks for p in cb._find_last_checkpoints(self.trainer)]
        if found:
            return max(found, key=lambda p: p.stat().st_mtime)
        folder = callbacks[0].dirpath
        if subcommand == "fit":
            raise DataError(folder, "no last.ckpt to resume (--ckpt_path last): leave --ckpt_path out to start a new "
                                    "run, or give the killed run's --trainer.default_root_dir")  # fmt: skip
        raise DataError(folder, f"no last.ckpt to load (--ckpt_path last): `cmav {subcommand}` would score untrained "
                                "weights; give the run's --trainer.default_root_dir, or a checkpoint file")  # fmt: skip

    # an evaluation pass in emulated bf16 is slow too, if only once over the data
    def before_validate(self) -> None:
        warn_if_slow_bf16(self.trainer)
        self._set_checkpoint_dirs()
        self._check_ckpt_path()

    def before_test(self) -> None:
        warn_if_slow_bf16(self.trainer)
        self._set_checkpoint_dirs()
        self._check_ckpt_path()

    def before_predict(self) -> None:
        warn_if_slow_bf16(self.trainer)
        self._set_checkpoint_dirs()
        self._check_ckpt_path()


def run(argv: list[str] | None = None) -> int:
    """Run a Lightning sub-command; ``argv`` (default ``sys.argv[1:]``) starts with
    ``fit``/``validate``/``test``/``predict``. Bad input data (a :class:`DataError`, which names the
    file) is one line on stderr and exit status 2, as in cmav's other commands; anything else keeps
    its traceback."""
    try:
        _run_cli(argv)
    except (DataError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _run_cli(argv: list[str] | None) -> None:
    CmavCLI(
        model_class=None,  # any LightningModule, chosen by class path
        datamodule_class=AudioVisualDataModule,
        subclass_mode_model=True,
        args=argv,
        auto_configure_optimizers=False,  # the tasks configure their own (G and D for S2I)
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "cmav", "description": "cmav training and evaluation (Lightning CLI)"},
    )
