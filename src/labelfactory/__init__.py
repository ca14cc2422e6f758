"""labelfactory: DatasetGAN and BigDatasetGAN as one reproducible workflow."""

__version__ = "0.1.0"
