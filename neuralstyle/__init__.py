"""Stylize's library: networks, the pyfunc model contract, imaging, registry and serving glue.

Nothing is imported eagerly here, so the serving side (``neuralstyle.model.pyfunc_model`` and what it
imports) never pulls in torch.
"""
