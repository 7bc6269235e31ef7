"""Classification of key operations: event patterns, compiled rules and built-in packs."""
