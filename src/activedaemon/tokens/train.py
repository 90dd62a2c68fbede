"""Algorithm 1: train the token encoder G_e, the decoder and the WGAN critic together.

Loss (paper eq. 4, weights configurable): w_bits * BCE(bits) + scale * (w_ssim * (1 - SSIM)
+ w_l2 * MSE + w_lpips * LPIPS + w_critic * critic). The image terms stay off until the training
bit accuracy passes ``warmup_bit_acc`` (with them on from the start, bits stick at 0.5 while the
residual collapses to zero); then ``scale`` is steered each step: up while the bit accuracy holds
``target_bit_acc``, down when it slips, so invisibility is pushed as far as decoding allows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm

from activedaemon.data.config import DataConfig
from activedaemon.identity import CODE_BITS
from activedaemon.metrics import lpips_status, psnr_per_image, ssim_fast
from activedaemon.runs import config_from_dict, run_record, seed_everything, write_json
from activedaemon.tokens.evaluate import evaluate_tokens
from activedaemon.tokens.generator import TokenGenerator
from activedaemon.tokens.networks import ArchConfig, Critic, Decoder, Encoder
from activedaemon.tokens.noise import NoiseConfig, NoiseLayer


@dataclass
class EncoderTrainConfig(DataConfig):
    limit_test: int | None = 2000  # test images for the final report
    steps: int = 4200
    batch_size: int = 64
    lr: float = 1e-3
    final_lr_fraction: float = 0.15  # the last steps run at lr / 10
    seed: int = 0
    # Start from a trained encoder (a shipped name or a train-encoder run folder) of the same
    # architecture instead of random weights, e.g. to add JPEG robustness to an invisible one.
    init_from: str | None = None
    # Read the training images on the fly (DataLoader workers decode each batch): memory stays
    # flat for image folders larger than memory, e.g. at 224 px. The test split is loaded.
    stream: bool = False
    workers: int = 2
    # Architecture (see ArchConfig).
    base: int = 16
    secret_channels: int = 8
    decoder_width: int = 32
    decoder_hidden: int = 512
    secret_size: int | None = None
    decoder_stride: int = 1
    max_residual: float | None = None  # perceptual mask (ArchConfig); None = off
    mask_floor: float = 1.0
    mask_ref: float = 0.1
    # Loss weights (eq. 4).
    w_bits: float = 1.5
    w_ssim: float = 2.0
    w_l2: float = 20.0
    w_lpips: float = 1.5  # used only where LPIPS weights load
    w_critic: float = 0.5
    critic: bool = True
    critic_lr: float = 5e-5
    critic_clip: float = 0.01  # WGAN weight clipping
    w_mismatch: float = 0.0  # >0: the decoder must read nothing from a token moved to another image
    # Schedule.
    warmup_bit_acc: float = 0.9
    target_bit_acc: float = 0.995
    scale_init: float = 0.1
    scale_up: float = 1.02
    scale_down: float = 1.03
    noise_ramp_steps: int = 1000
    noise: NoiseConfig = field(default_factory=NoiseConfig)

    @classmethod
    def from_dict(cls, values: dict) -> EncoderTrainConfig:
        cfg = config_from_dict(cls, values, {"noise": NoiseConfig}, "encoder training")
        cfg.validate_data()
        if cfg.workers < 0:
            raise ValueError(f"workers must be >= 0, got {cfg.workers}")
        return cfg

    def arch(self) -> ArchConfig:
        return ArchConfig(
            image_size=self.image_size,
            channels=self.channels,
            base=self.base,
            secret_channels=self.secret_channels,
            decoder_width=self.decoder_width,
            decoder_hidden=self.decoder_hidden,
            secret_size=self.secret_size,
            decoder_stride=self.decoder_stride,
            max_residual=self.max_residual,
            mask_floor=self.mask_floor,
            mask_ref=self.mask_ref,
        )


ENCODER_PRESET_DIR = Path(__file__).resolve().parent.parent / "configs" / "encoders"
# Encoder training presets (activedaemon/configs/encoders/*.yaml): name -> option values.
PRESETS: dict[str, dict] = {
    p.stem: yaml.safe_load(p.read_text()) or {} for p in sorted(ENCODER_PRESET_DIR.glob("*.yaml"))
}


def _bits_loss(decoder: Decoder, images: torch.Tensor, codewords: torch.Tensor):
    logits = decoder(images)
    loss = F.binary_cross_entropy_with_logits(logits, codewords)
    return loss, ((logits > 0).float() == codewords).float().mean()


def _load_start(name_or_path: str, arch: ArchConfig, encoder: Encoder, decoder: Decoder) -> None:
    start = TokenGenerator.load(name_or_path)
    if start.arch != arch:
        theirs, ours = start.arch.to_dict(), arch.to_dict()
        diff = {k: (theirs[k], ours[k]) for k in ours if theirs.get(k) != ours[k]}
        raise ValueError(
            f"init_from={name_or_path!r} has another architecture (its, this run's): {diff}"
        )
    encoder.load_state_dict(start.encoder.state_dict())
    decoder.load_state_dict(start.decoder.state_dict())


def _memory_batches(cfg: EncoderTrainConfig, data, gen: torch.Generator) -> Iterator[torch.Tensor]:
    images = data.train.images.contiguous(memory_format=torch.channels_last)
    while True:
        yield images[torch.randint(len(images), (cfg.batch_size,), generator=gen)]


def _stream_batches(cfg: EncoderTrainConfig) -> Iterator[torch.Tensor]:
    """Batches drawn with replacement, as the in-memory path draws them, read per index."""
    split = cfg.open_stream().train
    draws = cfg.steps * cfg.batch_size
    sampler = RandomSampler(
        split,
        replacement=True,
        num_samples=draws,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    loader = DataLoader(
        split,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.workers,
        persistent_workers=cfg.workers > 0,
    )
    for images, _ in loader:
        yield (images.float() / 255).contiguous(memory_format=torch.channels_last)


def train_encoder(
    cfg: EncoderTrainConfig, out: str | Path, progress: bool = True
) -> TokenGenerator:
    """Run Algorithm 1 and write the run folder ``out`` (also a loadable encoder checkpoint)."""
    seed_everything(cfg.seed)
    data = cfg.load_data(train=not cfg.stream)
    with run_record(out, "train-encoder", cfg, cfg.seed) as rec:
        generator, rec.metrics = _train(cfg, data, rec.out, progress)
    return generator


def _train(cfg: EncoderTrainConfig, data, out: Path, progress: bool):
    arch = cfg.arch()
    # channels_last: about 1.7x faster convolutions on this CPU.
    cl = torch.channels_last
    encoder, decoder = Encoder(arch).to(memory_format=cl), Decoder(arch).to(memory_format=cl)
    if cfg.init_from:
        _load_start(cfg.init_from, arch, encoder, decoder)
    critic = Critic(arch).to(memory_format=cl) if cfg.critic else None
    noise = NoiseLayer(cfg.noise)
    params = list(encoder.parameters()) + list(decoder.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr)
    critic_opt = torch.optim.RMSprop(critic.parameters(), lr=cfg.critic_lr) if critic else None
    lpips_model, lpips_reason = lpips_status() if cfg.w_lpips > 0 else (None, "weight 0")
    if lpips_model is None:
        tqdm.write(f"LPIPS loss off: {lpips_reason}")
    encoder.train(), decoder.train()

    gen = torch.Generator().manual_seed(cfg.seed)
    batches = _stream_batches(cfg) if cfg.stream else _memory_batches(cfg, data, gen)
    image_losses_on, scale, acc_ema = False, cfg.scale_init, 0.5
    log_rows: list[dict] = []
    started = time.time()
    bar = tqdm(range(cfg.steps), desc="train-encoder", disable=not progress, mininterval=1.0)
    for step in bar:
        if step == int(cfg.steps * (1 - cfg.final_lr_fraction)):
            for group in opt.param_groups:
                group["lr"] = cfg.lr / 10
        x = next(batches)
        codewords = torch.randint(0, 2, (cfg.batch_size, CODE_BITS), generator=gen).float()
        residual = encoder(x, codewords)
        x_a = (x + residual).clamp(0, 1)
        strength = min(1.0, step / max(cfg.noise_ramp_steps, 1))
        bits_loss, acc = _bits_loss(decoder, noise(x_a, strength), codewords)
        loss = cfg.w_bits * bits_loss
        image_loss = torch.zeros(())
        if image_losses_on:
            image_loss = cfg.w_ssim * (1 - ssim_fast(x_a, x)) + cfg.w_l2 * F.mse_loss(x_a, x)
            if lpips_model is not None:
                rgb = (lambda t: t.expand(-1, 3, -1, -1)) if cfg.channels == 1 else (lambda t: t)
                image_loss = image_loss + cfg.w_lpips * lpips_model(rgb(x_a), rgb(x))
            if critic is not None:
                image_loss = image_loss - cfg.w_critic * critic(x_a).mean()
            loss = loss + scale * image_loss
        if cfg.w_mismatch > 0:
            # The token of image i moved onto image i+1 should carry no readable bits (p = 0.5).
            moved = noise((x.roll(1, dims=0) + residual).clamp(0, 1), strength)
            loss = loss + cfg.w_mismatch * torch.sigmoid(decoder(moved)).sub(0.5).pow(2).mean() * 4
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

        if critic is not None and image_losses_on:
            # WGAN critic: clean images score high, authorized ones low; weights clipped.
            critic_loss = critic(x_a.detach()).mean() - critic(x).mean()
            critic_opt.zero_grad(set_to_none=True)
            critic_loss.backward()
            critic_opt.step()
            for p in critic.parameters():
                p.data.clamp_(-cfg.critic_clip, cfg.critic_clip)

        acc_ema = 0.95 * acc_ema + 0.05 * acc.item()
        if not image_losses_on:
            image_losses_on = acc_ema >= cfg.warmup_bit_acc
        elif acc_ema >= cfg.target_bit_acc:
            scale = min(scale * cfg.scale_up, 1e4)
        else:
            scale = max(scale / cfg.scale_down, 1e-3)

        if step % 50 == 0 or step == cfg.steps - 1:
            psnr = psnr_per_image(x_a.detach(), x).clamp(max=100).mean().item()
            row = {
                "step": step,
                "seconds": round(time.time() - started, 1),
                "bit_acc": round(acc_ema, 4),
                "psnr": round(psnr, 2),
                "image_loss": round(image_loss.item(), 4),
                "scale": round(scale, 4),
            }
            log_rows.append(row)
            bar.set_postfix(bit_acc=row["bit_acc"], psnr=row["psnr"], scale=row["scale"])
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"training diverged at step {step}: loss {loss.item()}")
    train_seconds = time.time() - started
    write_json(out / "train_log.json", log_rows)

    generator = TokenGenerator(arch, encoder.eval(), decoder.eval())
    metrics = evaluate_tokens(generator, data.test.images, seed=cfg.seed)
    metrics["train_seconds"] = round(train_seconds, 1)
    metrics["image_losses_started_at_step"] = next(
        (r["step"] for r in log_rows if r["image_loss"] != 0), None
    )
    generator.save(
        out,
        dataset=cfg.dataset,
        image_size=cfg.image_size,
        channels=cfg.channels,
        training=asdict(cfg),
        metrics=metrics,
    )
    from activedaemon.tokens.figures import save_sample_grid

    save_sample_grid(generator, data.test.images[:6], out / "samples.png", seed=cfg.seed)
    return generator, metrics
