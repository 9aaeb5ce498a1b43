"""The public surface of the admitd package is deliberate: changing it must change this test."""

import admitd


def test_exported_members() -> None:
    assert sorted(admitd.__all__) == sorted(
        [
            "EMBEDDED_DEFAULT",
            "AcquireSpec",
            "AdmitdError",
            "AdmitdServer",
            "Backend",
            "Clock",
            "ConfigError",
            "Engine",
            "InvalidArgument",
            "ManualClock",
            "MemoryBackend",
            "NotFound",
            "PermissionDenied",
            "Reason",
            "Rejected",
            "Settings",
            "SystemClock",
            "Unavailable",
            "Usage",
            "__version__",
            "load_config",
            "parse_config",
            "serve",
        ]
    )
    for name in admitd.__all__:
        assert hasattr(admitd, name), name
