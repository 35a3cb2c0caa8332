"""Entry point for ``python -m cogrpo`` (and ``accelerate launch -m cogrpo``)."""

from cogrpo.cli import app

if __name__ == "__main__":
    app()
