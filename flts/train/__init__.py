"""The train function (one deployment per MODEL_TYPE): fit, export for serving, log to MLflow."""
