"""Sources: CAN frames from live buses (any python-can interface), log replay and the simulator."""
