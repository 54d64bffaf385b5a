"""Pix2Pix (Isola et al. 2017), the paper's C-GAN: sketch -> colour with a U-Net and a PatchGAN.

Notation: x = sketch (the paper's input), y = colour ground truth, G(x) = generated colour image,
D(x, y) = PatchGAN logits on the channel-concatenated pair.

    L_D = 1/2 [BCE(D(x, y), 1) + BCE(D(x, G(x)), 0)]
    L_G = BCE(D(x, G(x)), 1) + lambda_l1 * |y - G(x)|_1          (lambda_l1 = 100)

With ``net.hint_channels = 4`` the generator also receives a sparse colour-hint map (RGB + mask);
the batch then carries ``hints``. ``lambda_hint`` (0 in the paper preset) adds
``lambda_hint * mean_{hinted pixels} |y - G(x)|``, which teaches the generator to honour hints faster.
``lambda_ssim`` (0 in every preset; beyond the paper) adds ``lambda_ssim * (1 - SSIM(G(x), y))`` with the
evaluation's SSIM (:func:`ganime.metrics.ssim.ssim_loss`): local structure, not only per-pixel error.

With ``net.line_multiply`` (beyond the paper) G(x) = colour layer x sketch luminance, and D's real pair
is (x, y x sketch luminance): both pairs carry exactly the sketch's lines, so D has to judge colour.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ganime.config import RunConfig
from ganime.data.hints import HintSampler
from ganime.methods import register
from ganime.methods.base import Method, gan_loss, set_requires_grad
from ganime.nn.layers import init_weights
from ganime.nn.patchgan import PatchDiscriminator
from ganime.nn.unet import UNetGenerator, multiply_lines


def generator_input(batch: dict[str, torch.Tensor], hint_channels: int) -> torch.Tensor:
    """The generator's input: the sketch, plus the hint map when the model takes hints."""
    x = batch["sketch"]
    if hint_channels:
        hints = batch.get("hints")
        if hints is None:
            hints = x.new_zeros(x.shape[0], hint_channels, *x.shape[2:])
        x = torch.cat([x, hints.to(x.dtype)], 1)
    return x


@register("pix2pix")
class Pix2Pix(Method):
    default_options = {"lambda_l1": 100.0, "lambda_hint": 0.0, "lambda_ssim": 0.0}

    @classmethod
    def option_problems(cls, options: dict) -> list[str]:
        o = {**cls.default_options, **options}
        return [f"--{k.replace('_', '-')} must be a finite weight >= 0 (got {o[k]})"
                for k in ("lambda_l1", "lambda_hint", "lambda_ssim") if not 0 <= o[k] < math.inf]

    def __init__(self, cfg: RunConfig, device: torch.device):
        super().__init__(cfg, device)
        n = cfg.net
        self.models["G"] = init_weights(self.build_generator(cfg))
        self.models["D"] = init_weights(PatchDiscriminator(6, n.disc_base, n.disc_layers, n.norm))
        self.to_device()
        self.optimizers["G"] = self.adam(self.models["G"].parameters())
        self.optimizers["D"] = self.adam(self.models["D"].parameters())
        #: Training batches get hints sampled from the ground truth when the generator takes them.
        self.hint_sampler = HintSampler() if n.hint_channels else None

    @staticmethod
    def build_generator(cfg: RunConfig) -> nn.Module:
        n = cfg.net
        return UNetGenerator(3 + n.hint_channels, 3, n.gen_base, n.gen_depth, n.norm, n.dropout,
                             line_multiply=n.line_multiply, color_blur=n.color_blur, color_flatten=n.color_flatten)

    def generator_input(self, batch):
        return generator_input(batch, self.cfg.net.hint_channels)

    def train_step(self, batch):
        G, D = self.models["G"], self.models["D"]
        opt_g, opt_d = self.optimizers["G"], self.optimizers["D"]
        x, y = batch["sketch"], batch["color"]
        # With a multiply-layer generator the fake is exactly (colour x sketch): D would tell it from the
        # truth by that alone (never brighter than the sketch), win outright and drive G to noise. So D
        # sees the truth under the same lines: both sides carry the sketch's lines, D judges the colour.
        y_d = multiply_lines(y, x) if self.cfg.net.line_multiply else y
        with self.autocast():
            fake = G(self.generator_input(batch))

            # Discriminator: real pairs -> 1, generated pairs -> 0.
            set_requires_grad(D, True)
            opt_d.zero_grad(set_to_none=True)
            loss_d_fake = gan_loss(D(torch.cat([x, fake.detach()], 1)), real=False)
            loss_d_real = gan_loss(D(torch.cat([x, y_d], 1)), real=True)
            loss_d = 0.5 * (loss_d_fake + loss_d_real)
        loss_d.backward()
        opt_d.step()

        # Generator: fool D, stay close to the ground truth in L1.
        set_requires_grad(D, False)
        opt_g.zero_grad(set_to_none=True)
        with self.autocast():
            loss_g_gan = gan_loss(D(torch.cat([x, fake], 1)), real=True)
            loss_g_l1 = nn.functional.l1_loss(fake.float(), y.float())
            loss_g = loss_g_gan + self.options["lambda_l1"] * loss_g_l1
            hints, extra = batch.get("hints"), {}
            if self.options["lambda_hint"] and hints is not None:
                mask = hints[:, -1:].float()
                err = ((fake.float() - y.float()).abs() * mask).sum() / (3 * mask.sum()).clamp_min(1.0)
                loss_g = loss_g + self.options["lambda_hint"] * err
                extra["G_hint"] = err.detach()
            if self.options["lambda_ssim"]:
                from ganime.metrics.ssim import ssim_loss

                loss_ssim = ssim_loss(fake, y)
                loss_g = loss_g + self.options["lambda_ssim"] * loss_ssim
                extra["G_ssim"] = loss_ssim.detach()
        loss_g.backward()
        opt_g.step()
        set_requires_grad(D, True)
        return {
            "G_gan": loss_g_gan.detach(),
            "G_l1": loss_g_l1.detach(),
            "D_real": loss_d_real.detach(),
            "D_fake": loss_d_fake.detach(),
            **extra,
        }

    @torch.no_grad()
    def sample(self, batch):
        G = self.models["G"]
        was = G.training
        G.eval()
        with self.autocast():
            fake = G(self.generator_input(batch)).float()
        G.train(was)
        return [batch["sketch"].float(), batch["color"].float(), fake]
