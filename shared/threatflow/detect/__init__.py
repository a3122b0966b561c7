"""Routes of the detect function (/api/v1/detect): the flow model over HTTP (the model is threatflow.flows.model)."""
