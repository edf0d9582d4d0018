"""Any painting as the style, at serving time (NumPy and Pillow only; the networks run in the Engine).

A painting is prepared as the original method prepares it (centre crop to a square, Lanczos to
256 px), turned into a 100-number style vector by the predictor network, and remembered by the
sha256 of its bytes in a small bounded cache, so a painting sent with every request of a batch
costs one predictor run. ``strength`` below 1 interpolates between the photo's own style vector
and the painting's, the method's own interpolation (not a pixel fade).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
from PIL import Image

from neuralstyle.model import imaging
from neuralstyle.model.styles import Resolved

STYLE_SIZE = 256  # the predictor network's input side
CACHE_ENTRIES = 256  # style vectors kept (400 bytes each): a bounded memory, whatever the traffic
COLUMN = "style_image"

VectorFn = Callable[[np.ndarray], np.ndarray]  # [256, 256, 3] in 0..1 -> [100] float32


class StyleVectorCache:
    """A thread-safe LRU of style vectors keyed by the content hash of the painting's bytes."""

    def __init__(self, max_entries: int = CACHE_ENTRIES) -> None:
        self.max_entries = max_entries
        self._vectors: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get_or_compute(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached vector for ``key``, else ``compute()`` once and remember it."""
        with self._lock:
            if key in self._vectors:
                self._vectors.move_to_end(key)
                self.hits += 1
                return self._vectors[key]
            self.misses += 1
        vector = compute()  # outside the lock: a slow painting must not block the others
        with self._lock:
            self._vectors[key] = vector
            self._vectors.move_to_end(key)
            while len(self._vectors) > self.max_entries:
                self._vectors.popitem(last=False)
        return vector

    def __len__(self) -> int:
        return len(self._vectors)


def painting_vector(data: bytes, vector_fn: VectorFn, what: str = COLUMN) -> np.ndarray:
    """Encoded painting bytes -> its style vector; the photo's checks and errors, naming ``what``."""
    square = imaging.decode_image(data, what, square=STYLE_SIZE)
    return vector_fn(square)


def resolve_painting(
    b64: str, vector_fn: VectorFn, cache: StyleVectorCache, what: str = COLUMN
) -> Resolved:
    """A ``style_image`` cell -> a resolved arbitrary style (cached by the painting's sha256)."""
    data = imaging.b64decode(b64, what)
    digest = hashlib.sha256(data).hexdigest()
    vector = cache.get_or_compute(digest, lambda: painting_vector(data, vector_fn, what))
    return Resolved(f"painting:{digest[:12]}", style_vector=vector)


def photo_vector(rgb: np.ndarray, vector_fn: VectorFn) -> np.ndarray:
    """The photo's own style vector (prepared exactly as a painting is)."""
    img = Image.fromarray(imaging.to_uint8(rgb))
    return vector_fn(imaging.to_rgb_array(imaging.centre_square(img, STYLE_SIZE)))


def with_strength(style: Resolved, rgb: np.ndarray, strength: float, vector_fn: VectorFn) -> Resolved:
    """``strength`` * painting + (1 - ``strength``) * the photo's own vector (the method's own mix)."""
    if strength >= 1.0 or style.style_vector is None:
        return style
    own = photo_vector(rgb, vector_fn)
    mixed = strength * style.style_vector + (1.0 - strength) * own
    return Resolved(style.label, style_vector=mixed.astype(np.float32))
