"""slth: strong lottery tickets - build, certify, search and measure subnetworks of random networks."""

__version__ = "0.1.0"

from .errors import SlthError  # noqa: E402

__all__ = ["SlthError", "__version__"]
