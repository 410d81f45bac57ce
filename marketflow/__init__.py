"""marketflow: exact crypto market data as a supervised Trio daemon."""

__version__ = "0.1.0"
