"""HTTP surface: the management API, the device API (later) and the dashboard (later)."""
