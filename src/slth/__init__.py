"""slth: strong lottery tickets - build, certify, search and measure subnetworks of random networks."""

__version__ = "0.1.0"

from .errors import SlthError  # noqa: E402

__all__ = ["SlthError", "Ticket", "load_ticket", "__version__"]


def __getattr__(name):  # torch is imported only when a ticket is asked for
    if name in ("Ticket", "load_ticket"):
        from . import ticket

        return getattr(ticket, name)
    raise AttributeError(f"module 'slth' has no attribute {name!r}")
