"""`python -m pax_trainer`."""

from pax_trainer.main import main

if __name__ == "__main__":
    raise SystemExit(main())
