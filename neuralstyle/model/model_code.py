"""MLflow "model from code" entry: MLflow executes this file to build the pyfunc model.

Logging the model as this file (not a pickled object) means loading it deserializes no Python
objects; ``neuralstyle/`` ships beside it through ``code_paths``.
"""

from mlflow.models import set_model

from neuralstyle.model.pyfunc_model import StyleTransferModel

set_model(StyleTransferModel())
