"""GANime's web app: a small HTTP API over :mod:`ganime.colorize` and a page for artists.

Standard library only (``http.server``); see :mod:`ganime.web.server` and ``docs/web.md``.
"""

from ganime.web.server import Limits, WebModel, make_server, models_from_checkpoints

__all__ = ["Limits", "WebModel", "make_server", "models_from_checkpoints"]
