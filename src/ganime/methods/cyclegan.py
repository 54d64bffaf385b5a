"""CycleGAN (Zhu et al. 2017), the paper's unpaired model: sketch <-> colour without paired examples.

Notation (the GANime paper's, after Zhu et al.): X = sketches, Y = colour images, x ~ X, y ~ Y drawn
independently (``batch["sketch"]``, ``batch["color"]``).

- ``models["G"]``  G: X -> Y, sketch -> colour (the U-Net used by ``ganime colorize``);
- ``models["F"]``  F: Y -> X, colour -> sketch (same U-Net, same NetConfig);
- ``models["D_X"]`` D_X: PatchGAN on sketches, ``models["D_Y"]`` D_Y: PatchGAN on colour images,
  both unconditional (3-channel input), unlike Pix2Pix's conditional D(x, y).

Losses (``gan`` is BCE with logits as in Pix2Pix, or least squares with ``gan_mode="lsgan"``)::

    L_GAN(G, D_Y) = gan(D_Y(G(x)), 1)                 L_GAN(F, D_X) = gan(D_X(F(y)), 1)
    L_cyc(G, F)   = |F(G(x)) - x|_1 + |G(F(y)) - y|_1
    L_idt(G, F)   = |G(y) - y|_1 + |F(x) - x|_1       (identity; both domains are 3-channel)
    L_G,F = L_GAN(G, D_Y) + L_GAN(F, D_X) + lambda_cycle * L_cyc
            + lambda_identity * lambda_cycle * L_idt  (identity weight relative to lambda_cycle, as the reference)
    L_D_Y = 1/2 [gan(D_Y(y), 1) + gan(D_Y(pool_Y(G(x))), 0)]
    L_D_X = 1/2 [gan(D_X(x), 1) + gan(D_X(pool_X(F(y))), 0)]

with lambda_cycle = 10 (the paper), lambda_identity = 0 and no history pool (``pool_size`` 0) in the
paper preset. As in the reference, G and F are updated first (one Adam over both), then D_X and D_Y
(one Adam over both), on the fakes of the same step or, with a pool, on fakes drawn from the last
``pool_size`` generated images (Shrivastava et al. 2017). The pool's contents and its random state
live in the checkpoint, and its random draws are seeded from (seed, rank, step), so ``--resume``
stays exact.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from ganime.config import RunConfig
from ganime.data.loader import step_seed
from ganime.errors import InputError
from ganime.methods import register
from ganime.methods.base import Method, gan_loss, set_requires_grad
from ganime.nn.layers import init_weights
from ganime.nn.patchgan import PatchDiscriminator
from ganime.nn.unet import UNetGenerator

GAN_MODES = ("vanilla", "lsgan")
#: step_seed stream tag of the history pools' draws.
_POOL = 21


def lsgan_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Least-squares GAN loss (Mao et al. 2017), the CycleGAN reference's default: MSE to 1 or 0."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return nn.functional.mse_loss(logits.float(), target.float())


class ImagePool:
    """History of generated images (Shrivastava et al. 2017; CycleGAN's 50-image buffer).

    Until full, every new image is stored and returned. Then each new image is, with probability
    1/2, swapped with a random stored one (the stored one is returned), else returned as is. Draws
    come from the ``generator`` passed to :meth:`query`, so the caller controls reproducibility.
    """

    def __init__(self, size: int):
        self.size = size
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.size == 0:
            return images
        images = images.detach()
        out = []
        for im in images:
            im = im[None]
            if len(self.images) < self.size:
                self.images.append(im.clone())
                out.append(im)
            elif torch.rand(1, generator=generator).item() < 0.5:
                k = int(torch.randint(len(self.images), (1,), generator=generator))
                out.append(self.images[k].clone())
                self.images[k] = im.clone()
            else:
                out.append(im)
        return torch.cat(out, 0)

    def state(self) -> torch.Tensor:
        return torch.cat(self.images, 0) if self.images else torch.empty(0)

    def load(self, t: torch.Tensor, device: torch.device) -> None:
        self.images = [im[None].to(device) for im in t] if t.numel() else []


@register("cyclegan")
class CycleGAN(Method):
    default_options = {"lambda_cycle": 10.0, "lambda_identity": 0.0, "pool_size": 0, "gan_mode": "vanilla"}

    @classmethod
    def option_problems(cls, options: dict) -> list[str]:
        o, problems = {**cls.default_options, **options}, []
        if o["gan_mode"] not in GAN_MODES:
            problems.append(f"CycleGAN gan_mode must be one of {', '.join(GAN_MODES)} (got {o['gan_mode']!r})")
        if not (0 <= o["lambda_cycle"] < math.inf and 0 <= o["lambda_identity"] < math.inf):
            problems.append("CycleGAN loss weights must be finite and not negative "
                            f"(got --lambda-cycle {o['lambda_cycle']}, --lambda-identity {o['lambda_identity']})")
        if int(o["pool_size"]) != o["pool_size"] or o["pool_size"] < 0:
            problems.append(f"CycleGAN pool size must be a whole number >= 0 (got {o['pool_size']})")
        return problems

    def __init__(self, cfg: RunConfig, device: torch.device):
        super().__init__(cfg, device)
        o = self.options
        problems = self.option_problems(o)
        if problems:
            raise InputError("; ".join(problems))
        n = cfg.net
        self.models["G"] = init_weights(self.build_generator(cfg))
        self.models["F"] = init_weights(self.build_generator(cfg))
        self.models["D_X"] = init_weights(PatchDiscriminator(3, n.disc_base, n.disc_layers, n.norm))
        self.models["D_Y"] = init_weights(PatchDiscriminator(3, n.disc_base, n.disc_layers, n.norm))
        self.to_device()
        m = self.models
        self.optimizers["G"] = self.adam(itertools.chain(m["G"].parameters(), m["F"].parameters()))
        self.optimizers["D"] = self.adam(itertools.chain(m["D_X"].parameters(), m["D_Y"].parameters()))
        self.gan = lsgan_loss if o["gan_mode"] == "lsgan" else gan_loss
        self.pool_x, self.pool_y = ImagePool(int(o["pool_size"])), ImagePool(int(o["pool_size"]))
        #: Training steps done (checkpointed): seeds the pools' draws.
        self.steps = 0

    @staticmethod
    def build_generator(cfg: RunConfig) -> nn.Module:
        """A 3 -> 3 channel U-Net: G (sketch -> colour) and F (colour -> sketch) alike."""
        n = cfg.net
        if n.hint_channels:
            raise InputError("CycleGAN does not take colour hints (net.hint_channels must be 0)")
        if n.line_multiply:
            raise InputError("CycleGAN's generators cannot multiply by sketch lines (net.line_multiply must be false)")
        return UNetGenerator(3, 3, n.gen_base, n.gen_depth, n.norm, n.dropout)

    def cycle_loss(self, x, y, fake_y, fake_x) -> tuple[torch.Tensor, torch.Tensor]:
        """(|F(G(x)) - x|_1, |G(F(y)) - y|_1) given fake_y = G(x) and fake_x = F(y)."""
        G, F = self.models["G"], self.models["F"]
        rec_x, rec_y = F(fake_y), G(fake_x)
        return nn.functional.l1_loss(rec_x.float(), x.float()), nn.functional.l1_loss(rec_y.float(), y.float())

    def _rank(self) -> int:
        d = torch.distributed
        return d.get_rank() if d.is_available() and d.is_initialized() else 0

    def train_step(self, batch):
        m, o = self.models, self.options
        G, F, D_X, D_Y = m["G"], m["F"], m["D_X"], m["D_Y"]
        opt_g, opt_d = self.optimizers["G"], self.optimizers["D"]
        x, y = batch["sketch"], batch["color"]
        lam_c, lam_i = o["lambda_cycle"], o["lambda_identity"]

        # Generators G and F: fool D_Y and D_X, and come back to the input around both cycles.
        set_requires_grad(D_X, False)
        set_requires_grad(D_Y, False)
        opt_g.zero_grad(set_to_none=True)
        with self.autocast():
            fake_y, fake_x = G(x), F(y)
            loss_g_gan = self.gan(D_Y(fake_y), real=True)
            loss_f_gan = self.gan(D_X(fake_x), real=True)
            cyc_x, cyc_y = self.cycle_loss(x, y, fake_y, fake_x)
            loss = loss_g_gan + loss_f_gan + lam_c * (cyc_x + cyc_y)
            if lam_i > 0:
                idt = (nn.functional.l1_loss(G(y).float(), y.float())
                       + nn.functional.l1_loss(F(x).float(), x.float()))
                loss = loss + lam_i * lam_c * idt
        loss.backward()
        opt_g.step()
        set_requires_grad(D_X, True)
        set_requires_grad(D_Y, True)

        # Discriminators D_Y (colour) and D_X (sketch): real -> 1, generated (or pooled) -> 0.
        g = torch.Generator().manual_seed(step_seed(self.cfg.train.seed, _POOL, self._rank(), self.steps))
        pooled_y = self.pool_y.query(fake_y.detach(), g)
        pooled_x = self.pool_x.query(fake_x.detach(), g)
        opt_d.zero_grad(set_to_none=True)
        with self.autocast():
            d_y_real, d_y_fake = self.gan(D_Y(y), real=True), self.gan(D_Y(pooled_y), real=False)
            d_x_real, d_x_fake = self.gan(D_X(x), real=True), self.gan(D_X(pooled_x), real=False)
            loss_d = 0.5 * (d_y_real + d_y_fake) + 0.5 * (d_x_real + d_x_fake)
        loss_d.backward()
        opt_d.step()
        self.steps += 1
        out = {
            "G_gan": loss_g_gan.detach(),
            "F_gan": loss_f_gan.detach(),
            "cycle_x": cyc_x.detach(),
            "cycle_y": cyc_y.detach(),
            "D_Y": (0.5 * (d_y_real + d_y_fake)).detach(),
            "D_X": (0.5 * (d_x_real + d_x_fake)).detach(),
        }
        if lam_i > 0:
            out["idt"] = idt.detach()
        return out

    @torch.no_grad()
    def sample(self, batch):
        """Rows x | G(x) | F(G(x)) | y | F(y) | G(F(y)): each grid line shows both cycles."""
        G, F = self.models["G"], self.models["F"]
        was = G.training, F.training
        G.eval()
        F.eval()
        x, y = batch["sketch"], batch["color"]
        with self.autocast():
            fake_y, fake_x = G(x), F(y)
            rec_x, rec_y = F(fake_y), G(fake_x)
        G.train(was[0])
        F.train(was[1])
        return [t.float() for t in (x, fake_y, rec_x, y, fake_x, rec_y)]

    def extra_state(self) -> dict:
        return {"steps": self.steps, "pool_x": self.pool_x.state(), "pool_y": self.pool_y.state()}

    def load_extra_state(self, extra: dict) -> None:
        self.steps = int(extra.get("steps", 0))
        self.pool_x.load(extra.get("pool_x", torch.empty(0)), self.device)
        self.pool_y.load(extra.get("pool_y", torch.empty(0)), self.device)
