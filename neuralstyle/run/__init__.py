"""Running a registered model: in-process, over HTTP, a local server, a container."""
