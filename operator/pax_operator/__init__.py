"""The PaxJob operator: kopf handlers → reconcile/kits (API I/O) → core (pure) → spec models."""
