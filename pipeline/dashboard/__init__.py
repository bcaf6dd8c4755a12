"""The web dashboard and the static HTML report: what the generations did, per element.

``queries``   aggregation pipelines over the store, run in the database, into a small
              :class:`~pipeline.dashboard.queries.Snapshot` (sizes ~ generations × elements,
              never ~ frames); the metrics schema the flow writes is documented there.
``summaries`` per-generation summary documents, written once a generation's labels are
              final, so refreshes read ~1 small document per finished generation.
``readonly``  the only handle on the database the dashboard uses: find and aggregate.
``firstview`` the headline, per-element numbers and latest generations as plain HTML,
              painted before any JavaScript runs.
``figures``   Plotly figures built from a snapshot (shared by the app and the report).
``app``       the Plotly Dash app, refreshed from the store in the background.
``report``    one self-contained HTML file (plotly.js inlined, no network needed).
``cli``       ``selfplay dashboard`` and ``selfplay report``.

Dash and Plotly are the ``dashboard`` extra; importing this package alone needs neither.
"""
