"""``python -m chard``: the ``chard`` command, run by the Python given (``chard multi`` uses it)."""

from __future__ import annotations

from chard.cli.main import main

if __name__ == "__main__":
    main()
