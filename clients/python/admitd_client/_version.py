"""The package version, also sent as the gRPC user agent."""

__version__ = "0.1.0"
USER_AGENT = f"admitd-client-python/{__version__}"
