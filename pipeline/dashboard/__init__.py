"""The web dashboard and the static HTML report: what the generations did, per element.

``queries``   aggregation pipelines over the store, run in the database, into a small
              :class:`~pipeline.dashboard.queries.Snapshot` (sizes ~ generations × elements,
              never ~ frames); the metrics schema the flow writes is documented there.
``readonly``  the only handle on the database the dashboard uses: find and aggregate.
``figures``   Plotly figures built from a snapshot (shared by the app and the report).
``app``       the Plotly Dash app, refreshed from the store in the background.
``report``    one self-contained HTML file (plotly.js inlined, no network needed).
``cli``       ``selfplay dashboard`` and ``selfplay report``.

Dash and Plotly are the ``dashboard`` extra; importing this package alone needs neither.
"""
