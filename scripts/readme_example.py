"""Runs the README's Python example (the ```python block after `<!-- python-example -->`) as
written, in a scratch folder: `python scripts/readme_example.py README.md DIR`. When torch is not
installed, a stand-in module `torch` (numpy behind the few calls the example makes) goes beside it."""

import pathlib
import re
import subprocess
import sys

STAND_IN = '''"""A numpy stand-in for the torch calls of the README example (torch is not installed)."""
import numpy as np

class Tensor(np.ndarray):
    def numpy(self):
        return np.asarray(self)

class Generator:
    def manual_seed(self, seed):
        self.rng = np.random.default_rng(seed)
        return self

def randint(low, high, size, generator):
    return generator.rng.integers(low, high, size).view(Tensor)

def randn(*size, generator):
    return generator.rng.standard_normal(size, dtype=np.float32).view(Tensor)
'''

readme, scratch = pathlib.Path(sys.argv[1]).read_text(), pathlib.Path(sys.argv[2])
found = re.search(r"<!-- python-example -->\s*```python\n(.*?)```", readme, re.S)
if not found:
    sys.exit("readme_example: no ```python block after <!-- python-example --> in the README")
(scratch / "example.py").write_text(found.group(1))
try:
    import torch  # noqa: F401
except ImportError:
    (scratch / "torch.py").write_text(STAND_IN)
    print("readme_example: torch not installed: a numpy stand-in for its calls")
sys.exit(subprocess.run([sys.executable, "example.py"], cwd=scratch).returncode)
