"""Device profiles: one TOML file per device kind, read by ``bcaudio.runtime.package.profiles``."""
