"""The PaxJob operator: kopf handlers → reconcile/adapters (API I/O) → core (pure) → spec models."""
