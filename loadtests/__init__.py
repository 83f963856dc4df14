"""Locust scenarios, the Socket.IO spectator companion and the benchmark (``python -m loadtests.bench``)."""
