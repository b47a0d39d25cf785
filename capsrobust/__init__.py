"""capsrobust: matrix capsules (EM routing) vs a matched CNN, under attack and at novel viewpoints."""

__version__ = "0.1.0"
