"""Fixtures shared by every test package."""

from tests.fixtures.s3 import restartable_s3, s3_auth_server, s3_bucket, s3_server

__all__ = ["restartable_s3", "s3_auth_server", "s3_bucket", "s3_server"]
