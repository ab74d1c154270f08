"""spikect: brain-inspired lung CT diagnosis with a multi-task hybrid spiking network."""

__version__ = "0.1.0"
