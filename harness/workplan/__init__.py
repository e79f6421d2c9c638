"""The run as a plan of work units on a cluster: units (plan.py), a list scheduler that keeps
units on disjoint cards (scheduler.py), card leases through Ray placement groups (leases.py),
and the figures of a run (figures.py)."""
