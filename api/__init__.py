"""The REST API: jobs, their metadata, live status events and health (``jobline api``).

Importing this package imports no web framework; :func:`api.app.create_app` builds the app.
"""
