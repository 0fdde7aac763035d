"""``python -m simrec``: the same command line as the ``simrec`` console script."""

from simrec.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
