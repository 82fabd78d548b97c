"""The durable store-and-forward queue: the only copy of the data until the cloud acknowledged it."""

from agent.store.sqlite import Evicted, Store, StoreFullError, StoreStats

__all__ = ["Evicted", "Store", "StoreFullError", "StoreStats"]
