"""Layer 3, The Auth API: its client, subscription reconciliation, the ping and its diagnosis, and a local fake."""
