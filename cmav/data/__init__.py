"""Data: the Sub-URMP layout, loaders, the preprocessing cache and the DataModule."""

from cmav.data.datamodule import AudioVisualDataModule
from cmav.data.datasets import PairDataset, PairedFolder, SubURMP
from cmav.data.errors import DataError, DataWarning
from cmav.data.instruments import CLASS_TO_INDEX, INSTRUMENT_SPECS, INSTRUMENTS
from cmav.data.player_split import split_players

__all__ = [
    "AudioVisualDataModule",
    "CLASS_TO_INDEX",
    "DataError",
    "DataWarning",
    "INSTRUMENTS",
    "INSTRUMENT_SPECS",
    "PairDataset",
    "PairedFolder",
    "SubURMP",
    "split_players",
]
