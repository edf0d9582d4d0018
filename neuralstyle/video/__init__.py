"""Video in, stylized video out: decode/encode with PyAV, optical flow, temporal consistency, metrics.

Client side only (the pipeline and the CLI use it): nothing here ships inside the served model.
"""
