"""distill: transfer a thinking teacher's reasoning into small students."""

__version__ = "0.1.0"
