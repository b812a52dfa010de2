"""The programs and their wiring: the `moor` CLI, `moor up`, the worker and API
programs, the embedded Redis launcher. Nothing else imports this package."""
