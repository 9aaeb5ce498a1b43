"""The gRPC boundary: the servicer, errors as gRPC statuses, who is calling, TLS, the server
with health and drain, and the config file watcher. Nothing below imports from here."""
