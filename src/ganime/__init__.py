"""GANime: colour anime and manga line art with deep learning.

Implements the system of "GANime: Generating Anime and Manga Character Drawings from Sketches with
Deep Learning" (Vu & Yang): Pix2Pix, CycleGAN and neural style transfer, with evaluation.
"""

__version__ = "0.1.0"
