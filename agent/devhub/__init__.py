"""A faithful loopback hub with fault injection, and the demo model (development only; not in the image)."""
