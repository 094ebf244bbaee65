"""balancedet: imbalance remedies for object detection, exact to their papers, in plain PyTorch."""

__version__ = "0.1.0"
