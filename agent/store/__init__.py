"""The durable store-and-forward queue: the only copy of the data until the cloud acknowledged it."""

from agent.store.sqlite import (
    Evicted,
    Quarantined,
    Store,
    StoreCorruptError,
    StoreFullError,
    StoreStats,
    is_corrupt,
    read_stats,
)

__all__ = ["Evicted", "Quarantined", "Store", "StoreCorruptError", "StoreFullError", "StoreStats", "is_corrupt", "read_stats"]
