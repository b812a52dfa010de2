"""Process supervision: the per-container supervisor, its init (namespaces, pivot_root),
spawning, signals and the stop escalation, cgroups, json-file logs."""
