"""cmav: cross-modal audio<->visual generation."""

__version__ = "0.1.0"
