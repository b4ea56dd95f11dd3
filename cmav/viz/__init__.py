"""Pictures for people: labelled image grids (contact sheets, sample sheets)."""

from cmav.viz.grid import labelled_grid

__all__ = ["labelled_grid"]
