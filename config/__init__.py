"""Settings of the connector. Imports neither `connector` nor `jobs`."""

from config.settings import Settings, SettingsError, load_settings

__all__ = ["Settings", "SettingsError", "load_settings"]
