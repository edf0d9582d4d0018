"""Docker images built from a registered model, and the try-it page inside them."""
