"""The HTTP API beside ingest: queries, access control, and the audit of API use."""
