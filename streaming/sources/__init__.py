"""Where `ImageRef`s come from: a local folder, Pub/Sub storage notifications (parsed
against `schemas/notification.json`), and the catch-up that finds what has no row yet.

`contract` builds the notification a bucket sends for an object; the catch-up here and
the backfill CLI (`publisher/`) both publish or parse exactly that message.
"""
