"""The pure decider: state, decide, evolve, react/resume, names, IPAM, validation.

No I/O, no clock, no randomness (tests/unit/test_layers.py checks it by folder)."""
