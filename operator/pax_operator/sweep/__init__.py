"""PaxSweep: hyperparameter search, trials as PaxJobs (spec → algorithms → decide → kube → reconcile)."""
