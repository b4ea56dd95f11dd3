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

import contextlib
import io
import json
import linecache
import os
import re
import shutil
import sys
import warnings
import zipfile
from pathlib import Path

import yaml
from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.model_registry import _is_registry
from lightning.pytorch.utilities.warnings import PossibleUserWarning

import cmav.tasks  # noqa: F401  (registers the task classes for short names)
from cmav.bench.cpu_bf16 import warn_if_slow_bf16
from cmav.data.datamodule import AudioVisualDataModule
from cmav.data.errors import DataError
from cmav.features.frontend import front_end_config, merge_front_end_settings


def _log_dir(default_root_dir: str | None) -> str:
    """The logger's save_dir: the run's root (Lightning's own default, the working directory, when unset)."""
    return str(default_root_dir) if default_root_dir is not None else os.getcwd()


class SettingsError(ValueError):
    """A model or data module refused its settings (or its data) while the CLI built or ran it; the
    message names which."""


def _own_refusal(exc: BaseException) -> tuple[BaseException, object | None] | None:
    """The ValueError or OSError (a missing checkpoint or pipeline) that cmav code raised at the bottom
    of ``exc``'s chain of causes (jsonargparse wraps a model's refusal of its settings in "Does not
    validate against any of the Union subtypes"; the data module, built directly, raises its own),
    with the object whose ``__init__`` raised it; None when the chain ends elsewhere."""
    seen, inner = set(), exc
    while inner.__cause__ is not None and id(inner.__cause__) not in seen:
        seen.add(id(inner))
        inner = inner.__cause__
    # jsonargparse's own errors (a value of the wrong type) are raised in jsonargparse: not taken here
    if not isinstance(inner, (ValueError, OSError)) or not _raised_in_cmav(inner):
        return None  # raised by a library, not by a cmav check: keep the whole traceback
    frames, tb = [], inner.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    owner = next((f.f_locals.get("self") for f in frames if f.f_code.co_name == "__init__"
                  and type(f.f_locals.get("self")).__module__.startswith("cmav.")), None)  # fmt: skip
    return inner, owner


class CmavCLI(LightningCLI):
    """LightningCLI with the frame size given once, by the data."""

    _argv: list[str] = []  # the command line as parsed (data.features merged: _with_merged_features)

    def parse_arguments(self, parser: LightningArgumentParser, args: list[str] | dict | Namespace | None) -> None:
        """Parse with ``data.features`` merged as :func:`_with_merged_features` says, then refuse a model
        image_size that the link from data.image_size would overwrite."""
        if isinstance(args, (dict, Namespace)):
            super().parse_arguments(parser, args)
            return
        self._argv = _with_merged_features(list(sys.argv[1:] if args is None else args))
        self.config = parser.parse_args(self._argv)
        self._refuse_given_image_size(parser)

    def _refuse_given_image_size(self, parser: LightningArgumentParser) -> None:
        """A :class:`SettingsError` when the command line or a config file gives the model an image_size
        other than data.image_size: the link (add_arguments_to_parser) wrote the data's over it without a word (a 64x64
        generator for ``--model.init_args.image_size 32``). What was given is read by a second parse
        without defaults or links (the first holds the linked value, a default indistinguishable)."""
        try:
            from jsonargparse._link_arguments import skip_apply_links  # no public switch for this
        except ImportError:
            return
        sub = self.config.get("subcommand")
        data = (self.config.get(sub) if sub else self.config).get("data")
        try:
            with skip_apply_links(), contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                given = parser.parse_args(self._argv, defaults=False)
        except (Exception, SystemExit):
            return  # the full parse went through; nothing read here is worth a second error
        model = (given.get(sub) if sub else given).get("model")
        value = model.get("init_args.image_size") if isinstance(model, Namespace) else None
        size = data.get("image_size") if data is not None else None
        if value is not None and size is not None and value != size:
            raise SettingsError(f"model.init_args.image_size {value} differs from data.image_size {size}: the data "
                                "decides the frame size (the model's is linked to it), so set data.image_size "
                                f"(--data.image_size {value}) and leave model.init_args.image_size out")  # fmt: skip

    def instantiate_classes(self) -> None:
        """Build the components; a cmav class's refusal of its settings or a missing file it was given
        becomes one :class:`SettingsError` line (a :class:`DataError` stays one), not jsonargparse's
        wrapped error with every option's value."""
        try:
            super().instantiate_classes()
        except (ValueError, OSError) as exc:
            found = _own_refusal(exc)
            if found is None:
                raise
            inner, owner = found
            if isinstance(inner, DataError):
                raise inner from exc
            raise SettingsError(f"{self._component(owner)}: {inner}{self._file_option(inner, owner)}") from exc

    def _file_option(self, error: BaseException, owner: object | None) -> str:
        """For a missing file a model was given: `` (model.init_args.<key>)``, the option that named it,
        and for an encoder checkpoint the task's word on how to make one; else ""."""
        import lightning as L

        if not isinstance(error, OSError) or not isinstance(owner, L.LightningModule):
            return ""
        sub = self.config.get("subcommand")
        model = (self.config.get(sub) if sub else self.config).get("model")
        init_args = model.get("init_args") if isinstance(model, Namespace) else None
        if not isinstance(init_args, Namespace):
            return ""
        keys = [k for k, v in _flat(init_args.as_dict()).items()
                if _is_location(k) and isinstance(v, str) and v and v in str(error)]  # fmt: skip
        if not keys:
            return ""
        told = f" (model.init_args.{keys[0]})"
        how = getattr(owner, "_missing_encoder_message", None)
        if keys[0].endswith("encoder_ckpt") and callable(how):
            with contextlib.suppress(Exception):  # the task is half built; its hint is a courtesy
                return f"{told}; {how()}"
        return told + (f"; {_MADE_BY[keys[0]]}" if keys[0] in _MADE_BY else "")

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

    def _ckpt_path_file(self) -> str | None:
        """The config file that set ckpt_path, when the command line did not (a run's saved config.yaml
        from before it was saved with ``ckpt_path: null``); None when the command line set it."""
        found, i = None, 0
        while i < len(self._argv):
            key, eq, value = self._argv[i].partition("=")
            if key in ("-c", "--config", "--ckpt_path"):
                if not eq:
                    i += 1
                    value = self._argv[i] if i < len(self._argv) else ""
                loaded = _loaded_yaml(value) if key != "--ckpt_path" else None
                if key == "--ckpt_path" or (isinstance(loaded, dict) and "ckpt_path" in loaded):
                    found = value if key != "--ckpt_path" else None
            i += 1
        return found

    def _ckpt_path_told(self, given: str) -> str:
        """How the error names the ckpt_path setting: ``--ckpt_path last``, or the file that set it."""
        where = self._ckpt_path_file()
        return f"ckpt_path: {given} in {where}" if where else f"--ckpt_path {given}"

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
        resumed = self._check_ckpt_path()  # with the dirpaths set: where `last` is looked for
        self._continue_log_version(resumed)
        for cb in self.trainer.callbacks:
            if isinstance(cb, _SaveConfig):
                cb.resumed_from = resumed

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
        """Lightning's own writes a --ckpt_path file's hyper-parameters (its class included) over the
        parsed config, and reads no file for ``last``: ``fit`` with a file path trained the checkpoint's
        model whatever the config and the command line said. Here ``fit`` builds the config's model
        for both (before_fit refuses a checkpoint of other settings); validate/test/predict score the
        model the checkpoint holds (its settings, as Lightning does) for both, with a warning naming
        the config's settings it replaces. A checkpoint of another model class is refused in all."""
        self._check_ckpt_path(resolve_last=False)
        subcommand = self.config.get("subcommand")
        if subcommand in (None, "fit"):
            return
        given = self.config[subcommand].get("ckpt_path")
        path = self._last_from_config(subcommand) if given == "last" else Path(given) if given else None
        if path is None or not path.is_file():
            return  # `last` with none: before_<subcommand> names the folder
        saved = _read_checkpoint(path, mmap=True).get("hyper_parameters") or {}
        model = self.config[subcommand].get("model")
        ours = model.get("class_path") if hasattr(model, "get") else None
        if ours:
            _refuse_another_class(path, saved, ours, _imported(ours))
        self._class_checked = path.resolve()
        init_args = model.get("init_args") if hasattr(model, "get") else None
        if init_args is not None and (replaced := _setting_differences(saved, init_args.as_dict())):
            told = "; ".join(replaced[:4]) + (f"; {len(replaced) - 4} more" if len(replaced) > 4 else "")
            warnings.warn(f"{path}: `cmav {subcommand}` scores the model this checkpoint holds, with its own settings "
                          f"in place of this run's: {told.replace(' there, ', ' (checkpoint), ')}", UserWarning,
                          stacklevel=1)  # fmt: skip
        # Lightning's reading of the file's hyper-parameters, given the file `last` resolves to
        self.config[subcommand]["ckpt_path"] = str(path)
        try:
            super()._parse_ckpt_path()
        finally:
            self.config[subcommand]["ckpt_path"] = given

    def _last_from_config(self, subcommand: str) -> Path | None:
        """The newest last*.ckpt of the checkpoint folders the config names (``<default_root_dir>/
        checkpoints`` for a ModelCheckpoint without a dirpath), before the trainer exists; None if none."""
        trainer = self.config[subcommand].get("trainer")
        root = Path(trainer.get("default_root_dir") or os.getcwd())
        folders = {root / "checkpoints"}
        for cb in trainer.get("callbacks") or []:
            if hasattr(cb, "get") and str(cb.get("class_path", "")).endswith("ModelCheckpoint"):
                folders.add(Path((cb.get("init_args") or {}).get("dirpath") or root / "checkpoints"))
        found = [p for folder in folders if folder.is_dir() for p in folder.glob("last*.ckpt")
                 if re.match(r"^last(-\d+)?$", p.stem)]  # fmt: skip
        return max(found, key=lambda p: p.stat().st_mtime) if found else None

    def _check_ckpt_path(self, resolve_last: bool = True) -> Path | None:
        """Refuse a ``--ckpt_path`` that names no checkpoint file (missing, a folder), or whose file (for
        ``last``: the newest last*.ckpt of the checkpoint folders) is not a whole checkpoint, naming it:
        torch's own error ("failed finding central directory") names neither the file nor the likely
        cause, a save cut off by a kill. ``last`` with no such file is refused too: Lightning would only
        warn, then train from scratch (fit) or score untrained weights (validate, test, predict).
        Returns the checkpoint file (None: none given, ``best`` or a remote one, or not resolved yet)."""
        subcommand = self.config.get("subcommand")
        given = self.config.get(subcommand, {}).get("ckpt_path") if subcommand else None
        if not given:
            if subcommand in ("validate", "test", "predict") and resolve_last:
                # Lightning then uses the model as the config builds it: a figure that reads like a trained model's
                warnings.warn(f"no --ckpt_path: `cmav {subcommand}` scores the weights the config builds (untrained, "
                              "but for any encoder it loads); give --ckpt_path last (this run's last.ckpt) or a "
                              "checkpoint file", UserWarning, stacklevel=1)  # fmt: skip
            return None
        if given == "last":
            if not resolve_last:  # no trainer yet
                return None
            path = self._last_checkpoint(subcommand)
        elif given in ("best", "hpc") or _is_registry(given) or "://" in str(given):  # resolved (or read) by Lightning
            return None
        else:
            path = Path(given)
            where = self._ckpt_path_file()
            told = f" (ckpt_path in {where})" if where else ""
            if path.is_dir():
                raise DataError(path, f"is a folder, not a checkpoint file (e.g. runs/<name>/checkpoints/last.ckpt){told}")
            if not path.exists():
                raise DataError(path, f"no such checkpoint{told}")
        if path.is_file() and not zipfile.is_zipfile(path):  # torch.save writes a zip archive
            raise DataError(path, f"{_UNREADABLE}: {_REMEDY_UNREADABLE}")
        if resolve_last:  # the model is built: compare it with the checkpoint's
            self._check_checkpoint_model(path, subcommand)
        return path

    def _check_checkpoint_model(self, path: Path, subcommand: str) -> None:
        """Refuse a checkpoint of another model class than the config's (every sub-command), and for
        ``fit`` one of other model settings, naming the keys: resuming continues the run as it was
        trained. validate/test/predict may change evaluation settings (samples, inference_condition);
        weights of other shapes are refused when they are loaded (:meth:`_run_subcommand`)."""
        if subcommand != "fit" and getattr(self, "_class_checked", None) == path.resolve():
            return  # read while parsing (validate/test/predict); not again
        saved = _read_checkpoint(path, mmap=True).get("hyper_parameters") or {}
        model = self.config[subcommand].get("model")
        ours = (model.get("class_path") if hasattr(model, "get") else None) or type(self.model).__qualname__
        _refuse_another_class(path, saved, ours, type(self.model))
        if subcommand != "fit":
            return
        if differences := _setting_differences(saved, dict(self.model.hparams)):
            raise DataError(path, f"was trained with other model settings than this run's: {'; '.join(differences)}. "
                                  "Resuming continues that run as it was: drop these options (or give the config it "
                                  "was trained with), or start a new run without --ckpt_path")  # fmt: skip

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
        told = self._ckpt_path_told("last")
        if subcommand == "fit":
            fresh = "give --ckpt_path null" if self._ckpt_path_file() else "leave --ckpt_path out"
            raise DataError(folder, f"no last.ckpt to resume ({told}): {fresh} to start a new run, or give the killed "
                                    "run's --trainer.default_root_dir")  # fmt: skip
        raise DataError(folder, f"no last.ckpt to load ({told}): `cmav {subcommand}` would score untrained "
                                "weights; give the run's --trainer.default_root_dir, or a checkpoint file")  # fmt: skip

    def _run_subcommand(self, subcommand: str) -> None:
        """Run it; weights that do not fit the config's model are one :class:`DataError` naming the
        checkpoint and the shapes, and a refusal of cmav code while it runs (a task's, the data module's
        or a callback's: a ValueError, a missing file, a TypeError it raises, e.g. in ``setup`` or at
        the first validation) one :class:`SettingsError` line. Errors of torch or Lightning keep their
        traceback. A log folder this run started and left empty of any training is removed with it."""
        before = _log_folders(self.trainer)
        try:
            try:
                super()._run_subcommand(subcommand)
            except RuntimeError as exc:
                path = getattr(self.trainer, "ckpt_path", None)
                if path is None or "Error(s) in loading state_dict" not in str(exc) or _is_registry(path):
                    raise
                raise DataError(path, f"its weights do not fit this run's model: {_shape_differences(path, self.model)}. "
                                      "It was trained with other settings: give the config it was trained with (its "
                                      "run's version_N/config.yaml)")  from exc  # fmt: skip
            except (ValueError, OSError, TypeError) as exc:
                if isinstance(exc, DataError) or not _refused_by_cmav(exc):
                    raise
                raise SettingsError(str(exc)) from exc
        except (DataError, SettingsError):
            if self.trainer.global_step == 0:  # nothing trained: the folder holds only the failed start
                for folder in _log_folders(self.trainer) - before:
                    shutil.rmtree(folder, ignore_errors=True)
            raise

    def _instantiate_trainer(self, config: dict, callbacks: list) -> Trainer:
        # A ModelCheckpoint's state key holds its schedule and monitor, not its file name: a second
        # one with the schedule of the YAML's last.ckpt writer (every_n_epochs 1, no monitor) made
        # Lightning refuse the run ("Found more than one stateful callback"). Such a one keys its
        # state by its file name too; the first keeps Lightning's key, so existing checkpoints resume.
        seen: set[str] = set()
        for cb in [*(config.get("callbacks") or []), *callbacks]:
            if type(cb) is ModelCheckpoint and cb.state_key in seen:
                cb.__class__ = _FileNamedCheckpoint
            if isinstance(cb, ModelCheckpoint):
                seen.add(cb.state_key)
        return super()._instantiate_trainer(config, [*callbacks, _LogVersions()])

    def _continue_log_version(self, resumed: Path | None) -> None:
        """On ``fit --ckpt_path`` of this run's own checkpoint (``last``, or a file under
        default_root_dir), log into the version folder of the run that wrote it (stored in it by
        :class:`_LogVersions`): a new one showed one run as two in TensorBoard, and the newest one may
        be a ``cmav validate``'s. A checkpoint from before that was stored continues the newest. A
        version the user set is kept."""
        given = self.config.get("fit", {}).get("ckpt_path")
        root = Path(self.trainer.default_root_dir).resolve()
        if resumed is None or (given != "last" and not resumed.resolve().is_relative_to(root)):
            return
        stored = _read_checkpoint(resumed, mmap=True).get(_LOG_VERSIONS) or {}
        for logger in self.trainer.loggers:
            # _version: None until the logger picks the next free one (Lightning's TensorBoard and CSV loggers)
            if getattr(logger, "_version", "set") is not None or not getattr(logger, "root_dir", None):
                continue
            version = stored.get(_logger_key(logger))
            if version is None:
                found = [int(p.name[len("version_"):]) for p in Path(logger.root_dir).glob("version_*")
                         if p.is_dir() and p.name[len("version_"):].isdigit()]  # fmt: skip
                version = max(found) if found else None
            if version is not None:
                logger._version = version

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


_LOG_VERSIONS = "cmav_log_versions"
"""The checkpoint key of the loggers' versions (:class:`_LogVersions`)."""


def _logger_key(logger: object) -> str:
    """A logger's key in :data:`_LOG_VERSIONS`: its class, and its name when it has one."""
    name = getattr(logger, "name", "") or ""
    return type(logger).__name__ + (f":{name}" if name else "")


class _LogVersions(Callback):
    """Stores each logger's version in the checkpoints, for a resumed run to log on into its own run's
    folder (:meth:`CmavCLI._continue_log_version`)."""

    def on_save_checkpoint(self, trainer: Trainer, pl_module: object, checkpoint: dict) -> None:
        checkpoint[_LOG_VERSIONS] = {_logger_key(lg): lg.version for lg in trainer.loggers
                                     if getattr(lg, "root_dir", None)}  # fmt: skip


class _SaveConfig(SaveConfigCallback):
    """Lightning's config.yaml, with ``ckpt_path: null`` for a resumed fit and the checkpoint it resumed
    in a comment: ``ckpt_path: last`` made ``cmav fit --config <that file>`` resume whatever last.ckpt
    the root held (or, in another root, refuse to start) instead of training the run again."""

    resumed_from: Path | None = None  # set by CmavCLI.before_fit

    def setup(self, trainer: Trainer, pl_module: object, stage: str) -> None:
        given = self.config.get("ckpt_path") if stage == "fit" else None
        if not given or self.already_saved:
            super().setup(trainer, pl_module, stage)
            return
        self.config = self.config.clone()
        self.config["ckpt_path"] = None
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.save_to_log_dir:
            path = Path(trainer.log_dir) / self.config_filename
            told = f"{self.resumed_from} (ckpt_path {given})" if self.resumed_from and given != str(self.resumed_from) \
                else str(given)  # fmt: skip
            path.write_text(f"# resumed from {told}; saved as ckpt_path: null, so that `cmav fit --config` this "
                            f"file trains the run again\n{path.read_text()}")  # fmt: skip


_MADE_BY = {
    "audio_encoder_ckpt": "it is the sound classifier's checkpoint: `cmav fit --config experiments/audio_classifier.yaml` "
                          "writes runs/audio_classifier/checkpoints/last.ckpt",
    "image_encoder_ckpt": "it is the image classifier's checkpoint: `cmav fit --config experiments/image_encoder.yaml` "
                          "writes runs/image_encoder/checkpoints/last.ckpt",
}  # fmt: skip
"""How to make the encoder checkpoint a task option names, for a task that does not say it itself."""


def _log_folders(trainer: Trainer) -> set[Path]:
    """The version folders under the loggers' root folders now."""
    roots = {Path(lg.root_dir) for lg in trainer.loggers if getattr(lg, "root_dir", None)}
    return {p for root in roots if root.is_dir() for p in root.glob("version_*") if p.is_dir()}


_UNREADABLE = "not a readable checkpoint (half-written or corrupt?)"
_REMEDY_UNREADABLE = "resume from an earlier one, or start again without --ckpt_path"


def _read_checkpoint(path: Path, mmap: bool = False) -> dict:
    """The checkpoint's dict (tensors mapped with ``mmap``), every member's CRC checked; a
    :class:`DataError` naming the file (and a damaged member) when it cannot be read."""
    from cmav.tasks.classifier import _load_checkpoint

    try:
        return _load_checkpoint(path, mmap=mmap)
    except ValueError as exc:
        problem = str(exc).removeprefix(f"{path}: ")
        if problem.startswith(_UNREADABLE):
            problem = f"{problem}: {_REMEDY_UNREADABLE}"
        raise DataError(path, problem) from exc


class _FileNamedCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint whose state key holds its file name as well (see ``_instantiate_trainer``)."""

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode, every_n_train_steps=self._every_n_train_steps,
                                        every_n_epochs=self._every_n_epochs, train_time_interval=self._train_time_interval,
                                        filename=self.filename)  # fmt: skip


def _refuse_another_class(path: Path, saved: dict, ours: str, our_class: type | None) -> None:
    """A :class:`DataError` when the checkpoint's hyper-parameters name another model class than
    ``ours`` (the config's model.class_path); nothing when they name none (not written by the CLI)."""
    theirs = saved.get("_class_path")
    if theirs is not None and _imported(theirs) is not our_class:
        raise DataError(path, f"holds a {theirs}, but this run's model is {ours} (model.class_path): give a "
                              "checkpoint of that model, or the config the checkpoint was trained with")  # fmt: skip


def _imported(class_path: str) -> type | None:
    """The class a checkpoint's ``_class_path`` names; None when it cannot be imported."""
    import importlib

    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _flat(value: object, prefix: str = "") -> dict[str, object]:
    """Nested settings as ``{"a.b": leaf}``, tuples as lists and paths as strings (as YAML has them)."""
    if isinstance(value, dict):
        return {k: v for key, inner in value.items() for k, v in _flat(inner, f"{prefix}{key}.").items()}
    if isinstance(value, (tuple, list)):
        value = [list(v) if isinstance(v, tuple) else v for v in value]
    return {prefix[:-1]: str(value) if isinstance(value, Path) else value}


def _is_location(key: str) -> bool:
    """Keys that say where a pretrained part was read from (an encoder checkpoint, a diffusion
    pipeline): a moved run folder changes them, and the checkpoint holds the weights read."""
    last = key.rsplit(".", 1)[-1]
    return last.endswith("_ckpt") or last in ("pipeline", "pipeline_dir")


def _setting_differences(saved: dict, ours: dict) -> list[str]:
    """``model.init_args.<key> <checkpoint's> there, <this run's> here`` for each model setting that
    differs. Not compared: keys this run leaves unset (None: filled from the data, e.g. class_names,
    or from the checkpoint), keys the checkpoint lacks (written by an older cmav), file locations."""
    theirs = _flat({k: v for k, v in saved.items() if not k.startswith("_")})
    found = []
    for key, value in _flat({k: v for k, v in ours.items() if not k.startswith("_")}).items():
        if value is None or key not in theirs or _is_location(key) or theirs[key] == value:
            continue
        name = "data.image_size" if key == "image_size" else f"model.init_args.{key}"  # linked from the data
        found.append(f"{name} {theirs[key]!r} there, {value!r} here")
    return found


def _shape_differences(path: str | Path, model: object) -> str:
    """The parameters whose shapes differ between the checkpoint and ``model`` (the first few), and
    how many it lacks or has in excess."""
    saved = _read_checkpoint(Path(path), mmap=True).get("state_dict") or {}
    ours = model.state_dict()
    differ = [f"{k} {list(saved[k].shape)} there, {list(v.shape)} here" for k, v in ours.items()
              if k in saved and hasattr(saved[k], "shape") and saved[k].shape != v.shape]  # fmt: skip
    told = differ[:3] + ([f"{len(differ) - 3} more"] if len(differ) > 3 else [])
    missing, extra = len(set(ours) - set(saved)), len(set(saved) - set(ours))
    told += [f"{n} {what}" for n, what in ((missing, "parameters missing from it"), (extra, "it has that this model lacks")) if n]
    return "; ".join(told) or "its parameters differ"


def _refused_by_cmav(exc: BaseException) -> bool:
    """Whether ``exc`` is a refusal of cmav code: a ValueError or OSError it raised, or a TypeError of
    its own ``raise`` (a call with wrong arguments in cmav code is a bug, and keeps its traceback)."""
    if not _raised_in_cmav(exc):
        return False
    if not isinstance(exc, TypeError):
        return True
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return linecache.getline(tb.tb_frame.f_code.co_filename, tb.tb_lineno).lstrip().startswith("raise ")


def _loaded_yaml(value: str) -> object:
    """A ``--config`` (or ``--data``) value as YAML: the file it names, or the YAML string it is; None
    when neither reads (jsonargparse reports that)."""
    try:
        return yaml.safe_load(Path(value).read_text() if Path(value).is_file() else value)
    except (OSError, ValueError, yaml.YAMLError):
        return None


def _yaml_value(value: str) -> object:
    """A command-line value as jsonargparse reads it: YAML (``64`` an int, ``null`` None), else the string."""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


_FEATURES = "--data.features"


def _with_merged_features(argv: list[str]) -> list[str]:
    """``argv`` with every ``data.features`` it sets (in config files, ``--data``, ``--data.features``
    and ``--data.features.<option>``, in order) merged into one ``--data.features`` at its end, as
    :func:`~cmav.features.frontend.merge_front_end_settings` merges: options of one kind add up, and
    another kind starts from its defaults. jsonargparse replaces a dict-typed value from a later file
    whole and adds a later option to it, so ``--data.features.kind lms`` over a harmonic YAML that set
    n_fft would keep that n_fft, and a later file's ``{f_max: 3000}`` would drop the harmonic kind.
    The one ``--data.features`` holds every option of the kind (config.yaml and ``--print_config``
    show them all). ``argv`` as it is when nothing sets data.features."""
    features, seen, kept, i = None, False, [], 0
    while i < len(argv):
        word = argv[i]
        key, eq, value = word.partition("=")
        sets = key == _FEATURES or key.startswith(_FEATURES + ".")
        if not (sets or key in ("-c", "--config", "--data")) or (not eq and i + 1 == len(argv)):
            kept.append(word)
            i += 1
            continue
        if not eq:
            value = argv[i + 1]
        i += 1 if eq else 2
        if not sets:
            kept += [word] if eq else [word, value]
            loaded = _loaded_yaml(value)
            data = loaded.get("data") if key != "--data" and isinstance(loaded, dict) else loaded
            if not isinstance(data, dict) or "features" not in data:
                continue
            given = data["features"]
        elif key == _FEATURES:
            given = _loaded_yaml(value) if value.strip() else None
        else:
            option = key[len(_FEATURES) + 1 :].removeprefix("init_args.")
            given = {"class_path": value} if option == "class_path" else {option: _yaml_value(value)}
        try:
            features, seen = merge_front_end_settings(features, given), True
        except ValueError:
            return argv  # not front-end settings: the data module names what is wrong
    if not seen:
        return kept
    with contextlib.suppress(ValueError):  # else the data module names what is wrong
        # every option, as config.yaml held them under the old typing: a run saved with them all is
        # the same run if a default changes
        features = None if features is None else front_end_config(features).to_dict()
    return [*kept, _FEATURES, json.dumps(features)]


def _raised_in_cmav(exc: BaseException) -> bool:
    """Whether ``exc``'s innermost frame is cmav code (a check of cmav's own, not a library's error)."""
    package = os.path.dirname(os.path.abspath(cmav.__file__))
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(package)


def run(argv: list[str] | None = None) -> int:
    """Run a Lightning sub-command; ``argv`` (default ``sys.argv[1:]``) starts with
    ``fit``/``validate``/``test``/``predict``. Bad input data (a :class:`DataError`, which names the
    file) or a cmav class's refusal of its settings is one line on stderr and exit status 2, as in
    cmav's other commands; anything else keeps its traceback."""
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
        save_config_callback=_SaveConfig,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "cmav", "description": "cmav training and evaluation (Lightning CLI)"},
    )
