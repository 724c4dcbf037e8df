"""`python -m pax_trainer`.

SIGTERM is blocked first, before the imports (a fraction of a second, jax's not among them): a SIGTERM in
that time stays pending until main() installs its handler, which unblocks it and handles it (exit 42 with a
result). Unblocked, it killed the interpreter (143, no result); and a container's PID 1 without a handler
would not even see it (the kernel drops it) and run on until the SIGKILL.
"""

import signal

if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    from pax_trainer.main import main

    raise SystemExit(main())
