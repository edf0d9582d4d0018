"""Which files are the model's code: what a registered version ships, and the hash of what made it.

One answer for packaging (``code_paths``, the ``code_version`` tag, the fingerprint) and for the
Docker images (their tags), so the two cannot disagree.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent  # neuralstyle/
REPO_DIR = PACKAGE_DIR.parent
SHIPPED_PACKAGE = "model"  # neuralstyle/model/: the only code inside a registered version
MODEL_CODE_FILE = PACKAGE_DIR / SHIPPED_PACKAGE / "model_code.py"  # MLflow's models-from-code file
BUILDER_PACKAGE = "builder"  # neuralstyle/builder/: exports the networks the model runs


def shipped_files() -> list[Path]:
    """The files every registered version carries in its ``code/`` folder."""
    return [PACKAGE_DIR / "__init__.py", *sorted((PACKAGE_DIR / SHIPPED_PACKAGE).glob("*.py"))]


def code_version() -> str:
    """sha256 (first 12 hex) over the code that serves the model and the code that exports it."""
    files = [*shipped_files(), *sorted((PACKAGE_DIR / BUILDER_PACKAGE).glob("*.py"))]
    digest = hashlib.sha256()
    for path in files:
        name = path.relative_to(PACKAGE_DIR).as_posix()
        digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def stage_shipped_code(folder: Path) -> Path:
    """Copy only the shipped package into ``folder/neuralstyle`` (for ``code_paths``); return it.

    MLflow copies a ``code_paths`` folder under its own name and puts its parent on
    ``sys.path``, so ``neuralstyle.model`` imports the same in the served model as here.
    """
    staged = folder / PACKAGE_DIR.name
    (staged / SHIPPED_PACKAGE).mkdir(parents=True)
    for path in shipped_files():
        shutil.copy2(path, staged / path.relative_to(PACKAGE_DIR))
    return staged
