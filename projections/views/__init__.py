"""Pure read folds over the World or the records: ps, inspect, the docker-events feed,
state changes, filters and time points. The clock is always an argument."""
