"""Building and registering models: the torch networks, weights, export, checks, registration."""
