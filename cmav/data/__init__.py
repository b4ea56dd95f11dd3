"""Data: the Sub-URMP layout, loaders, the preprocessing cache and the DataModule."""

from cmav.data.instruments import CLASS_TO_INDEX, INSTRUMENT_SPECS, INSTRUMENTS

__all__ = ["CLASS_TO_INDEX", "INSTRUMENT_SPECS", "INSTRUMENTS"]
