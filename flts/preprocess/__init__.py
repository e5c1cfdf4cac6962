"""The preprocess function: raw CSV → feature Parquet keyed by a config hash."""
