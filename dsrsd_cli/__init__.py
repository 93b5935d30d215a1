"""dsrsd: raw educational logs to Parquet; train, explain and compare DSRSD-Net."""

__version__ = "0.1.0"
