"""How many cases the fuzz tier draws: `HYPOTHESIS_PROFILE=release` (make fuzz) draws thousands."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Each case runs the command on a fresh job store: a case takes tens of milliseconds, not microseconds.
settings.register_profile("default", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("release", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
