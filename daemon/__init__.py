"""trailkeeper: a self-hosted audit-trail daemon."""

__version__ = "0.1.0"
