"""The host side: rq entry points (jobs), the start saga, reconcile and the worker
service, over one subfolder per host concern: storage/, net/, proc/."""
