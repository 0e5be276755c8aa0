"""The backfill CLI: publish storage notifications for objects already in a bucket."""
