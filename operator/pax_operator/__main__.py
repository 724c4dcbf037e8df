"""`python -m pax_operator`."""

from pax_operator.main import main

if __name__ == "__main__":
    raise SystemExit(main())
