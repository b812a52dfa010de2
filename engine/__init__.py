"""The single writer's shell around the pure core (engine/core): reducer, Lua scripts,
snapshot, restart timers, outbox, the events-stream reader; keys, errors, config."""
