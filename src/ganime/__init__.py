"""GANime: colour anime and manga line art with deep learning.

Implements the system of "GANime: Generating Anime and Manga Character Drawings from Sketches with
Deep Learning" (Vu & Yang): Pix2Pix, CycleGAN and neural style transfer, with evaluation.
"""

__version__ = "0.1.0"

__all__ = ["Colorizer", "__version__"]


def __getattr__(name: str):
    # `from ganime import Colorizer` without importing torch for `ganime --help` or `import ganime`
    if name == "Colorizer":
        from ganime.colorize import Colorizer

        return Colorizer
    raise AttributeError(f"module 'ganime' has no attribute {name!r}")
