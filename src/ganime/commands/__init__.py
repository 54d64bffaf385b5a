"""Sub-commands of the ``ganime`` CLI; see :mod:`ganime.cli`."""
