"""Locust load tests for the served pipeline (``htr.loadtest``).

``locustfile.py`` defines the users (gRPC and HTTP on ``tritonclient``); ``run.py`` is ``htr loadtest`` /
``make loadtest``: a bounded headless run against a local server with a summary. ``locust.conf`` holds
Locust-format defaults for running ``locust`` by hand.
"""
