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
import re
import sys
import warnings
import zipfile
from pathlib import Path

from lightning.pytorch import Trainer
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
    """A model or data module refused its settings (or its data) while the CLI built or ran it; the
    message names which."""


def _own_refusal(exc: BaseException) -> tuple[BaseException, object | None] | None:
    """The ValueError that cmav code raised at the bottom of ``exc``'s chain of causes (jsonargparse
    wraps a class's refusal of its settings in "Does not validate against any of the Union subtypes"),
    with the object whose ``__init__`` raised it; None when the chain ends elsewhere."""
    seen, inner = set(), exc
    while inner.__cause__ is not None and id(inner.__cause__) not in seen:
        seen.add(id(inner))
        inner = inner.__cause__
    if inner is exc or not isinstance(inner, ValueError) or not _raised_in_cmav(inner):
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
        self._continue_log_version()

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
            raise DataError(path, f"{_UNREADABLE}: {_REMEDY_UNREADABLE}")
        if resolve_last:  # the model is built: compare it with the checkpoint's
            self._check_checkpoint_model(path, subcommand)

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
        if subcommand == "fit":
            raise DataError(folder, "no last.ckpt to resume (--ckpt_path last): leave --ckpt_path out to start a new "
                                    "run, or give the killed run's --trainer.default_root_dir")  # fmt: skip
        raise DataError(folder, f"no last.ckpt to load (--ckpt_path last): `cmav {subcommand}` would score untrained "
                                "weights; give the run's --trainer.default_root_dir, or a checkpoint file")  # fmt: skip

    def _run_subcommand(self, subcommand: str) -> None:
        """Run it; weights that do not fit the config's model are one :class:`DataError` naming the
        checkpoint and the shapes, and a cmav task's or data module's own refusal while it runs (a
        ValueError raised by cmav code, e.g. in ``setup`` or at the first validation) one
        :class:`SettingsError` line. Errors of torch or Lightning keep their traceback."""
        try:
            super()._run_subcommand(subcommand)
        except RuntimeError as exc:
            path = getattr(self.trainer, "ckpt_path", None)
            if path is None or "Error(s) in loading state_dict" not in str(exc) or _is_registry(path):
                raise
            raise DataError(path, f"its weights do not fit this run's model: {_shape_differences(path, self.model)}. "
                                  "It was trained with other settings: give the config it was trained with (its "
                                  "run's version_N/config.yaml)")  from exc  # fmt: skip
        except ValueError as exc:
            if isinstance(exc, DataError) or not _raised_in_cmav(exc):
                raise
            raise SettingsError(str(exc)) from exc

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
        return super()._instantiate_trainer(config, callbacks)

    def _continue_log_version(self) -> None:
        """On ``fit --ckpt_path`` of this run's own checkpoint (``last``, or a file under
        default_root_dir), log into the newest existing version_N folder: a new one showed one run as
        two in TensorBoard. A version the user set is kept."""
        given = self.config.get("fit", {}).get("ckpt_path")
        root = Path(self.trainer.default_root_dir).resolve()
        if not given or (given != "last" and not (Path(given).is_file() and Path(given).resolve().is_relative_to(root))):
            return
        for logger in self.trainer.loggers:
            # _version: None until the logger picks the next free one (Lightning's TensorBoard and CSV loggers)
            if getattr(logger, "_version", "set") is not None or not getattr(logger, "root_dir", None):
                continue
            found = [int(p.name[len("version_"):]) for p in Path(logger.root_dir).glob("version_*")
                     if p.is_dir() and p.name[len("version_"):].isdigit()]  # fmt: skip
            if found:
                logger._version = max(found)

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
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "cmav", "description": "cmav training and evaluation (Lightning CLI)"},
    )
