"""Flow detection and hunting: features, the served model, the model registry, flow events."""
