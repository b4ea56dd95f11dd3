"""``cmav bench s2i``: images/s of the S2I-C training step, through Lightning and as a bare loop.

(a) **Lightning**: ``Trainer.fit`` of :class:`~cmav.tasks.S2ITask` (variant ``s2i_c``, frozen
    encoder, both mismatch terms) on the cached :class:`AudioVisualDataModule`, with everything the
    real run has on (TensorBoard logging of the step metrics, EMA, negative sampling, the
    DataLoader); a Callback times the steady-state batches after ``warmup``: the wall span from the
    end of the last warm-up batch to the end of the last timed one (the loading of each timed batch
    included).
(b) **bare**: the same modules (G, D, frozen encoder, EMA), the same losses and negatives in a
    plain PyTorch loop over data already on the device (batches are index gathers).

Both wait for the device (``torch.cuda.synchronize``) only where their timed span starts and where
it ends: a wait per batch would drain the GPU's queue of kernels on every batch in one path and not
in the other, and the ratio would measure the timing. So no in-step time is taken.

The encoder is an untrained sound-classifier encoder (the weights do not change the cost).
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import torch

from cmav.bench.cpu_bf16 import slow_bf16_warning


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if dev.type == "cuda":
        # said here, not as Lightning's MisconfigurationException or a CUDA error halfway through
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"device {name}: torch sees no CUDA device (torch.cuda.is_available() is False)")
        if (dev.index or 0) >= n:
            raise ValueError(f"device {name}: torch sees {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
    return dev


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _encoder_ckpt(dm, path: Path) -> Path:
    from cmav.tasks import ClassifierTask

    t = dm.train_full.tensors
    clf = ClassifierTask(modality="audio", target="label", image_size=dm.hparams.image_size,
                         class_names=list(dm.class_names), input_shape=list(t.audio.shape[1:]))  # fmt: skip
    torch.save({"hyper_parameters": dict(clf.hparams), "state_dict": clf.state_dict()}, path)
    return path


def _task(ckpt: Path, image_size: int, channels: int, channels_last: bool = False, seed: int = 0):
    from cmav.tasks import S2ITask

    torch.manual_seed(seed)
    return S2ITask(
        variant="s2i_c", encoder_mode="frozen", audio_encoder_ckpt=str(ckpt), image_size=image_size,
        generator={"base_channels": channels}, discriminator={"base_channels": channels},
        sample_every_n_steps=0, seed=seed, channels_last=channels_last,
    )  # fmt: skip


def _lightning(dm, task, device, steps, warmup, bf16, channels_last, tmp: Path) -> dict:
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    class Timer(L.Callback):
        def __init__(self) -> None:
            self.n = 0
            self.t_first: float | None = None
            self.t_last: float | None = None
            self.images = 0

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if channels_last:
                batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
            if self.n == warmup == 0:
                self._start()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            if warmup <= self.n < warmup + steps:
                self.images += int(batch["image"].shape[0])
            self.n += 1
            # from the end of the last warm-up batch, so that the span holds the loading of each timed
            # batch, as the bare loop's holds each one's index gather
            if self.n == warmup:
                self._start()
            if self.n == warmup + steps:
                _sync(device)
                self.t_last = time.perf_counter()

        def _start(self) -> None:
            _sync(device)
            self.t_first = time.perf_counter()

    timer = Timer()
    accel = "gpu" if device.type == "cuda" else device.type
    trainer = L.Trainer(
        accelerator=accel, devices=[device.index or 0] if device.type == "cuda" else 1,
        max_steps=2 * (warmup + steps), max_epochs=-1, precision="bf16-mixed" if bf16 else "32-true",
        logger=TensorBoardLogger(save_dir=str(tmp), name="bench", default_hp_metric=False), log_every_n_steps=10,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer], default_root_dir=str(tmp),
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*number of training batches.*")
        warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode.*")
        trainer.fit(task, datamodule=dm)
    if timer.t_first is None or timer.t_last is None:
        raise RuntimeError(f"the Lightning run ended after {timer.n} of {warmup + steps} batches")
    return {"images": timer.images, "span_s": timer.t_last - timer.t_first, "steps": steps}


def _bare(dm, task, device, steps, warmup, batch_size, bf16, channels_last, seed: int = 0) -> dict:
    from cmav.tasks.pairs import NegativeSampler
    from cmav.tasks.s2i import ema_decay_at, generator_adversarial_loss, pair_discriminator_loss

    t = dm.train_full.tensors
    audio_all = t.audio.to(device=device, dtype=torch.float32)
    images_all = t.images.to(device).float().div_(127.5).sub_(1.0)
    if channels_last:
        images_all = images_all.contiguous(memory_format=torch.channels_last)
    labels_all, tracks_all = t.labels.long(), t.tracks.long()
    pool = torch.as_tensor(dm.train.indices, dtype=torch.long)
    sampler = NegativeSampler(t.labels, t.tracks, pool=pool, n_classes=len(dm.class_names), warn=False)
    rng = torch.Generator().manual_seed(seed)

    task = task.to(device)
    enc, gen, disc, ema = task.net.encoder.eval(), task.net.generator.train(), task.discriminator.train(), task.ema
    opt_g = task.g_opt_config.build(gen.parameters())
    opt_d = task.d_opt_config.build(disc.parameters())
    w = task.weights
    z_dim = task.z_dim
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    feats_all = None
    if task.hparams.cache_frozen_features:  # as the task does at fit start: the frozen encoder runs once
        with torch.no_grad(), amp:
            feats_all = torch.cat([enc.forward_features(audio_all[i : i + 256]).feature for i in range(0, len(audio_all), 256)])

    def step(it: int) -> None:
        idx = pool[torch.randint(len(pool), (batch_size,), generator=rng)]
        labels, tracks = labels_all[idx], tracks_all[idx]
        neg = sampler.sample(labels, tracks, rng)
        dev_idx = idx.to(device, non_blocking=True)
        real = images_all[dev_idx]
        n = batch_size
        with amp:
            both = torch.cat([dev_idx, neg.wrong_class.to(device)])
            if feats_all is not None:
                feat = feats_all[both]
            else:
                with torch.no_grad():
                    feat = enc.forward_features(audio_all[both]).feature
            cond = feat[:n]
            fake = gen(torch.randn(n, z_dim, device=device), cond)
            # D: real -> 1; fake, wrong-class, wrong-player -> 0 (averaged, equal weights)
            for p in disc.parameters():
                p.requires_grad_(True)
            lr = disc(real, cond)
            negs = [(w.fake, disc(fake.detach(), cond))]
            ok_c = neg.wrong_class_valid.to(device)
            negs.append((w.wrong_class, disc(real[ok_c], feat[n:][ok_c])))
            ok_p = neg.wrong_player_valid
            wp = images_all[neg.wrong_player[ok_p].to(device)]
            negs.append((w.wrong_player, disc(wp, cond[ok_p.to(device)])))
            d_loss = pair_discriminator_loss(lr, negs)
        d_loss.backward()
        opt_d.step()
        opt_d.zero_grad(set_to_none=True)
        for p in disc.parameters():
            p.requires_grad_(False)
        with amp:
            lg = disc(fake, cond)
            g_loss = generator_adversarial_loss(lg)
        g_loss.backward()
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        ema.update(task.net, decay=ema_decay_at(it, task.hparams.ema_decay))

    for it in range(warmup):
        step(it)
    _sync(device)
    t0 = time.perf_counter()
    for it in range(warmup, warmup + steps):
        step(it)
    _sync(device)
    span = time.perf_counter() - t0
    for p in disc.parameters():
        p.requires_grad_(True)
    return {"images": steps * batch_size, "span_s": span, "steps": steps}


def bench_s2i(root: str | Path = "data/default", steps: int = 20, warmup: int = 3, batch_size: int = 64,
              image_size: int = 64, channels: int = 64, device: str = "auto", bf16: bool = False,
              channels_last: bool = False, threads: int | None = None) -> dict:  # fmt: skip
    """Time the S2I-C step both ways; returns images/s, ms/step and the Lightning/bare ratio.

    ``threads``: CPU threads for torch (``torch.set_num_threads``). On a shared CPU, fewer threads
    than cores avoids OpenMP oversubscription, which otherwise makes CPU timings swing ~10x."""
    from cmav.data.datamodule import AudioVisualDataModule

    for name, value in (("steps", steps), ("batch_size", batch_size), ("image_size", image_size), ("channels", channels)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 (None: torch's default), got {threads}")
    dev = _device(device)
    if bf16 and dev.type == "cpu" and (msg := slow_bf16_warning()):
        warnings.warn(msg, UserWarning, stacklevel=2)
    if threads is not None:
        torch.set_num_threads(int(threads))
    dm = AudioVisualDataModule(root=str(root), image_size=image_size, batch_size=batch_size, progress=False)
    dm.setup("fit")
    if len(dm.train) < batch_size:
        raise ValueError(f"{root}: {len(dm.train)} train pairs, fewer than one batch of {batch_size}")
    with tempfile.TemporaryDirectory(prefix="cmav_bench_") as tmp:
        tmp = Path(tmp)
        ckpt = _encoder_ckpt(dm, tmp / "encoder.ckpt")
        lit = _lightning(dm, _task(ckpt, image_size, channels, channels_last), dev, steps, warmup, bf16, channels_last, tmp)
        bare = _bare(dm, _task(ckpt, image_size, channels, channels_last), dev, steps, warmup, batch_size, bf16, channels_last)
    lit_ips = lit["images"] / lit["span_s"]
    bare_ips = bare["images"] / bare["span_s"]
    return {
        "device": str(dev) if dev.type != "cuda" else f"{dev} ({torch.cuda.get_device_name(dev)})",
        "batch_size": batch_size,
        "image_size": image_size,
        "channels": channels,
        "steps": steps,
        "warmup": warmup,
        "bf16": bf16,
        "channels_last": channels_last,
        "lightning_images_per_s": lit_ips,
        "lightning_step_ms": 1000 * lit["span_s"] / lit["steps"],
        "bare_images_per_s": bare_ips,
        "bare_step_ms": 1000 * bare["span_s"] / bare["steps"],
        "ratio": lit_ips / bare_ips,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


__all__ = ["bench_s2i"]
