"""Load the refit net of ``search.py`` in a process of its own and predict with it.

It needs only the storage and the artifact folder (shared with the machine that ran the
refit) and the ``mynets`` package; the dataset here is just something to predict on.
"""

import sys
from pathlib import Path

from sklearn.datasets import load_digits

import hpo

sys.path.insert(0, str(Path(__file__).parent))  # where mynets lives

net = hpo.load_refit("custom-residual-mlp", allow_modules=["mynets"])
images = (load_digits().data / 16.0).astype("float32").reshape(-1, 1, 8, 8)
test_images, test_labels = images[1350:], load_digits().target[1350:]
accuracy = (net.predict(test_images) == test_labels).mean()
print(f"{type(net.module_).__name__} loaded; test accuracy {accuracy:.3f}")
