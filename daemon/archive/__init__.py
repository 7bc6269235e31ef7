"""Archive: trackers select events and deliver them as batched files to a store."""
