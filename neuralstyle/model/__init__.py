"""What ships inside every registered version (the model's only code_paths): no torch, luigi or docker."""
