"""The drive layer: agents moving through off → shadow → assist → autonomous."""
