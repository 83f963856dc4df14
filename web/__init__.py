"""Falcon WSGI API: validates, authenticates, records jobs and enqueues them."""
