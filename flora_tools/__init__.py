"""Tools around the app: launchers, benchmarks, probes. Not shipped in the FAB."""
