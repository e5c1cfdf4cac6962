"""FLTS: time-series forecasting pipeline as serverless functions (the shared package)."""

__version__ = "0.1.0"
