"""mambamil: whole-slide images to slide-level predictions with SR-Mamba MIL aggregators."""

__version__ = "0.1.0"
