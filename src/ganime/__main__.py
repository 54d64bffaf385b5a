"""``python -m ganime`` (also what ``torchrun -m ganime`` runs)."""

from ganime.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
