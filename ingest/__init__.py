"""The receiver: verifies The Auth API's webhooks and group-commits them into Redis before answering 2xx."""
