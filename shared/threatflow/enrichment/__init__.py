"""The enrichment domain: intel sources, their normalised results, and the pipeline that fans out to them."""
