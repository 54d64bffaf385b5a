"""The interface every training method implements; the training loop in ganime.train drives it.

Style (after EDM and minGPT): a method owns its networks, optimizers and losses; ``train_step`` takes
a batch and returns a dict of named, detached loss tensors; the loop does logging, checkpoints,
samples and evaluation in one place.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn

from ganime.config import RunConfig


class Method:
    name: str = "?"
    #: Key in ``models`` of the sketch -> colour generator used by colorize/evaluate.
    generator_key: str = "G"
    #: Method-specific option defaults (merged under RunConfig.options).
    default_options: dict = {}

    def __init__(self, cfg: RunConfig, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.options = {**self.default_options, **cfg.options}
        unknown = set(cfg.options) - set(self.default_options)
        if unknown:
            from ganime.errors import InputError

            raise InputError(f"unknown {self.name} options: {', '.join(sorted(unknown))}")
        self.models: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    @classmethod
    def option_problems(cls, options: dict) -> list[str]:
        """What is wrong with ``options`` (merged over the defaults), as phrases for RunConfig.validate,
        which runs before a run folder is created; empty when they are usable."""
        return []

    # ---- to implement ------------------------------------------------------------------------
    @staticmethod
    def build_generator(cfg: RunConfig) -> nn.Module:
        raise NotImplementedError

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def generator_input(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the inference generator is fed for ``batch`` (the sketch, plus hints where taken)."""
        return batch["sketch"]

    @torch.no_grad()
    def sample(self, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Rows of the sample grid (each N x 3 x H x W in [-1, 1])."""
        raise NotImplementedError

    # ---- shared ------------------------------------------------------------------------------
    @property
    def generator(self) -> nn.Module:
        return self.models[self.generator_key]

    def autocast(self):
        if self.device.type == "cuda" and self.cfg.train.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def adam(self, params) -> torch.optim.Optimizer:
        t = self.cfg.train
        kw = {"fused": True} if self.device.type == "cuda" else {}
        return torch.optim.Adam(params, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps, **kw)

    def to_device(self) -> None:
        fmt = torch.channels_last if (self.device.type == "cuda" and self.cfg.train.channels_last) else None
        for m in self.models.values():
            m.to(self.device)
            if fmt is not None:
                m.to(memory_format=fmt)

    def state(self) -> dict:
        return {
            "models": {k: m.state_dict() for k, m in self.models.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "extra": self.extra_state(),
        }

    def load_state(self, state: dict) -> None:
        for k, m in self.models.items():
            m.load_state_dict(state["models"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        self.load_extra_state(state.get("extra", {}))

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, extra: dict) -> None:
        pass

    def train_mode(self, on: bool = True) -> None:
        for m in self.models.values():
            m.train(on)


def set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def gan_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Vanilla cGAN loss on discriminator logits: BCE with logits against all-ones or all-zeros."""
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return nn.functional.binary_cross_entropy_with_logits(logits.float(), target.float())
