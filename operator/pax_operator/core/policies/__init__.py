"""One small pure function per policy, composed by `decide` in a fixed order (docs/operator.md, "Policies").

Each policy gets the pass (`Pass`: what was observed, the status being built, the plan) and returns True when
the pass ends with it: later policies then do not run.
"""
