"""Layer 2, the audit trail: hash chain and checkpoints, the stores (one SQL layer, two dialects), queries and
cursors, the HTTP API with its OpenAPI document, and the web page."""
