"""``chard dashboard``: a web UI and JSON API over the cluster, like Flower (issue 17).

* :mod:`.monitor` follows events and asks the workers (no HTTP);
* :mod:`.views` turns what it knows into JSON-able answers, and runs actions;
* :mod:`.auth` decides who is let in, and which POSTs may act;
* :mod:`.metrics` renders ``/metrics`` for Prometheus;
* :mod:`.api` and :mod:`.openapi` are the HTTP routes and their description;
* :mod:`.server` runs it all under uvicorn.

Only :mod:`.api` and :mod:`.server` import starlette and uvicorn (the ``dashboard``
extra); importing this package does not.
"""
