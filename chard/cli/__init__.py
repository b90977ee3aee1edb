"""The ``chard`` command line (click): thin shells over the layers below."""
