"""Tickets: G (random weights) and masks as PyTorch modules and safetensors files.

``model``: the ticket and its modules; ``files``: the file format and the piece-by-piece writers;
``effective``: what each gadget of G computes in the target's terms (read by the certification).
"""

from .effective import EffectiveCopies, EffectiveLayer, combine_effective, widen_inputs
from .files import (FORMAT, FORMAT_VERSION, MemoryTicket, TicketFile, _metadata, load_ticket,
                    put_rows, read_rows, ticket_specs)
from .model import Layer, Ticket, sparsity_summary

__all__ = ["EffectiveCopies", "EffectiveLayer", "Layer", "MemoryTicket", "Ticket", "TicketFile", "load_ticket",
           "put_rows", "read_rows", "sparsity_summary", "ticket_specs", "widen_inputs",
           "combine_effective", "FORMAT", "FORMAT_VERSION", "_metadata"]
