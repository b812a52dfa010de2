"""Chaos harness: a seeded lifecycle workload against the real engine, with injected faults.

The engine is the one `tests.e2e.conftest.Engine` runs (reducer and worker as
`python -m moor.cli` subprocesses, a private redis-server, a unique key prefix, bridge,
subnet, cgroup parent and data root), here with two reducers (a leader and a standby).
While a seeded workload drives it through the Python client, faults are injected and each
one is confirmed on the host (the pid killed is seen dead, the lease is seen to move).
After the run the invariants are checked against something independent of the engine's
own answer: the journal read back from Redis, the client's ledger of what it was told,
the kernel's record of every process it exec'd, and the host's mounts, namespaces,
links, rules, cgroups and processes.

Modules: `rig` (the engine under test and its programs), `cleanup` (its teardown),
`hostprobe` (the host's facts), `observer` (every container process the kernel starts),
`workload` (the seeded driver and the ledger), `faults` (the injectors), `restore`
(Docker's restore rules after a host reboot), `journal` (reading it back, violations),
`hoststate` and `invariants` (the checks), `run` (a profile end to end), `report` (the
figures). From the repository root, as root: `python -m tests.chaos --long` runs the
long profile; `test_chaos.py` the CI one; `test_invariants.py` proves each check fails
on a broken history.
"""
